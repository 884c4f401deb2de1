"""sd_notify(3) messages to systemd and a watchdog fed only while the main loop makes progress.

The messages go through ``systemd.daemon.notify`` (libsystemd's sd_notify), which reads
``$NOTIFY_SOCKET`` at each call: systemd sets it for the service; tests set it to a socket of
their own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping

import systemd.daemon

from provhad import log

_log = log.get("provhad.notify")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock of systemd's MONOTONIC_USEC (and of
    ActiveEnterTimestampMonotonic): one clock for the whole host."""
    return time.monotonic_ns() // 1000


class Notifier:
    """sd_notify(3) messages to $NOTIFY_SOCKET; a no-op without one."""

    def __init__(self) -> None:
        self.enabled: bool = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one message. True if it was sent; never raises."""
        if not self.enabled or not lines:
            return False
        if any("\n" in line or "=" not in line for line in lines):
            # A newline inside a line would smuggle in another field.
            _log.debug("notify_bad_line", lines=list(lines))
            return False
        try:
            sent = bool(systemd.daemon.notify("\n".join(lines)))
        except (OSError, ValueError) as exc:  # e.g. an unsupported $NOTIFY_SOCKET
            _log.debug("notify_failed", error=str(exc), lines=list(lines))
            return False
        if not sent:
            _log.debug("notify_failed", error="no $NOTIFY_SOCKET", lines=list(lines))
        return sent

    def ready(self, status: str | None = None) -> None:
        """Startup or reload finished."""
        self.send("READY=1", *self._status_line(status))

    def reloading(self, usec: int | None = None) -> None:
        """A reload started (at ``usec`` on CLOCK_MONOTONIC, default now); follow with
        :meth:`ready` when it is done."""
        # MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253), ignored before.
        stamp = monotonic_usec() if usec is None else usec
        self.send("RELOADING=1", f"MONOTONIC_USEC={stamp}")

    def stopping(self, status: str | None = None) -> None:
        """Shutdown started."""
        self.send("STOPPING=1", *self._status_line(status))

    def status(self, text: str) -> None:
        """Free-form one-line status shown by ``systemctl status``."""
        self.send(*self._status_line(text))

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before the current start/stop/run timeout fires."""
        self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog(self) -> None:
        """Keep-alive ping for ``WatchdogSec=``."""
        self.send("WATCHDOG=1")

    @staticmethod
    def _status_line(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.splitlines()),)


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Half of WATCHDOG_USEC in seconds when the watchdog is meant for this process
    (WATCHDOG_PID unset or == pid), else None."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Watchdog:
    """Pings WATCHDOG=1 every `interval` seconds, but only while the main loop reports progress.

    Creating it counts as a beat, so the main loop gets ``stale_after`` seconds to make its
    first one. A main loop stuck on an await (a hung query, a lost lock) stops beating, the
    pings stop and systemd restarts the service; a ping from this task alone would only prove
    that the event loop still runs.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        stale_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or stale_after <= 0:
            raise ValueError("interval and stale_after must be positive")
        self._notifier = notifier
        self._interval = interval
        self._stale_after = stale_after
        self._clock = clock
        self._last_beat = clock()

    @property
    def stale_after(self) -> float:
        return self._stale_after

    @stale_after.setter
    def stale_after(self, seconds: float) -> None:
        """A new stall_timeout (SIGHUP)."""
        if seconds <= 0:
            raise ValueError("stale_after must be positive")
        self._stale_after = seconds

    def beat(self) -> None:
        """Record progress of the main loop."""
        self._last_beat = self._clock()

    def healthy(self) -> bool:
        """True if the last beat is at most ``stale_after`` seconds old."""
        return self._clock() - self._last_beat <= self._stale_after

    async def run(self) -> None:
        """Ping every ``interval`` while healthy, forever; stop by cancelling the task."""
        starved = False
        while True:
            if self.healthy():
                if starved:
                    _log.info("watchdog_fed_again")
                    starved = False
                self._notifier.watchdog()
            elif not starved:
                starved = True
                _log.warning(
                    "watchdog_starved",
                    stale_after=self._stale_after,
                    since_beat=round(self._clock() - self._last_beat, 3),
                )
            await asyncio.sleep(self._interval)
