"""The dhcpd supervisor: brings dhcpd up to date with the live files, beside the main loop.

It restarts dhcpd exactly when dhcpd does not run the live set: when the digest of the files on
disk ("applied") differs from the one dhcpd last came up with ("running"), or when its last
start failed. Restarts are paced from the *end* of the previous one (``min_restart_interval``)
and, after failures, by a growing backoff. When dhcpd does not come up, the set it last ran
with is made live again (a new generation) and started; with no such set known (a first
install) nothing is deleted: the new set stays, the failure is reported and retried.

Effects go through :class:`Ports`, so every path is unit-tested with fakes
(tests/test_supervisor.py) and with the real dhcpd in the daemon tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from provhad.scheduler import Clock, retry_pause
from provhad.services import Outcome
from provhad.state import State, now_iso

#: Restart outcomes a backoff starts from (seconds), whatever min_restart_interval says.
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 300.0
#: A restart that takes more than this share of its timeout is reported as too close to it.
TIGHT_SHARE = 0.5


class Ports(Protocol):
    """What the supervisor does to the world."""

    async def applied(self) -> str:
        """Digest of dhcpd's files on disk now ("" when there are none)."""

    async def restart(self, timeout: float) -> Outcome:
        """Restart dhcpd and check that it stays up."""

    async def mark_running(self) -> int | None:
        """Keep the live set as the one dhcpd runs (the rollback target); its generation."""

    async def rollback(self) -> int | None:
        """Make the running set live again; the new generation, None when none is known."""

    async def live_update(self) -> LiveUpdate:
        """Bring the running dhcpd to the live files without a restart (OMAPI), when only
        hosts or subclass members changed; say why not otherwise."""


@dataclass(frozen=True)
class LiveUpdate:
    """What an attempt to update dhcpd live did."""

    applied: bool = False
    #: False: not possible for this change (pools changed, OMAPI off ...): a plain restart
    attempted: bool = False
    reason: str = ""
    deletes: int = 0
    adds: int = 0
    #: only the host part was applied; other files changed too, so a restart is still due
    partial: bool = False
    #: subclass members (blocked.conf, modems-clients-public.conf) removed and added
    member_deletes: int = 0
    member_adds: int = 0


@dataclass(frozen=True)
class Pacing:
    """Restart pacing as configured."""

    min_interval: float
    timeout: float


class Supervisor:
    """Keeps dhcpd on the live set. One instance per daemon; :meth:`run` is its task."""

    def __init__(
        self,
        ports: Ports,
        state: State,
        pacing: Pacing,
        report: Callable[[], None],
        log: Any,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ports = ports
        self.state = state
        self.pacing = pacing
        self.report = report
        self.log = log
        self.clock = clock
        #: held while dhcpd restarts or its files are rolled back; a publish takes it too
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        #: no restart before this (monotonic); the end of the last one plus the pacing
        self.not_before = 0.0
        #: when the current restart or live update began (None: idle), for the main loop's
        #: watchdog beats while it waits for the lock
        self.busy_since: float | None = None
        #: the rendered set hash live when the last publish happened (held if dhcpd refuses it)
        self.published_set = ""

    # --- decisions -------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether dhcpd must be (re)started: the live files are not what it runs, or its last
        start failed."""
        s = self.state
        return bool(s.dhcpd_applied_set) and (s.restart_pending or not s.dhcpd_last_restart_ok)

    def wait(self) -> float | None:
        """Seconds until a due restart may run; None when none is due."""
        if not self.due():
            return None
        return max(0.0, self.not_before - self.clock())

    async def measure(self) -> None:
        """Read the applied digest now (after a publish, so the report that follows is true)."""
        self.state.dhcpd_applied_set = await self.ports.applied()

    def poke(self) -> None:
        """The live files may have changed (a publish): look again."""
        self.wake.set()

    def _pace(self, failed: bool) -> None:
        pause = self.pacing.min_interval
        if failed:
            pause = max(pause, retry_pause(self.state.dhcpd_failures, BACKOFF_FIRST, BACKOFF_MAX))
        self.not_before = self.clock() + pause

    # --- one step --------------------------------------------------------------------------

    async def step(self) -> None:
        """Measure; bring dhcpd up to date live if only hosts changed, else restart (or roll
        back) when due and allowed now."""
        async with self.lock:
            await self.measure()
            if not self.due():
                return
            # dhcpd runs and only its files differ: host changes go live without a restart
            # (not paced: they cost dhcpd nothing)
            s = self.state
            live = s.dhcpd_running_set and s.dhcpd_last_restart_ok and await self._live()
            if live or self.clock() < self.not_before:
                # (reported below either way: the OMAPI path changes the state too)
                self.report()
                return
            try:
                await self._restart()
            except Exception as exc:  # a file system or service error must not end us
                if self.state.dhcpd_last_restart_ok:  # else counted already
                    self.state.dhcpd_failures += 1
                self.state.dhcpd_last_restart_ok = False
                self.state.dhcpd_error = f"{type(exc).__name__}: {exc}"
                self.log.error("restart_failed", service="dhcpd", error=self.state.dhcpd_error)
                self._pace(failed=True)
        self.report()

    async def _live(self) -> bool:
        """Try the live update; True when dhcpd now holds the live set."""
        s = self.state
        applied = s.dhcpd_applied_set
        started = self.clock()
        self.busy_since = started  # bounded (each OMAPI request has a deadline): beat meanwhile
        try:
            upd = await self.ports.live_update()
        except Exception as exc:  # in doubt: restart
            upd = LiveUpdate(attempted=True, reason=f"{type(exc).__name__}: {exc}")
        finally:
            self.busy_since = None
        if not upd.applied:
            if upd.attempted:
                s.omapi_fallback = f"{now_iso()} {upd.reason}"
                self.log.warning("omapi_fallback", reason=upd.reason)
            else:
                self.log.debug("omapi_not_applicable", reason=upd.reason)
            return False
        s.omapi_hosts += upd.deletes + upd.adds
        s.omapi_last = f"{now_iso()} -{upd.deletes} +{upd.adds}"
        if upd.member_deletes or upd.member_adds:
            s.omapi_last += f" subclass -{upd.member_deletes} +{upd.member_adds}"
        self.log.info(
            "omapi_applied",
            deletes=upd.deletes,
            adds=upd.adds,
            subclass_deletes=upd.member_deletes,
            subclass_adds=upd.member_adds,
            seconds=round(self.clock() - started, 3),
            partial=upd.partial,
        )
        if upd.partial:
            # the hosts are served now; the rest waits for the (paced) restart
            return False
        s.dhcpd_running_set = applied
        try:
            s.dhcpd_running_generation = await self.ports.mark_running()
        except Exception as exc:  # dhcpd holds the set: only the rollback target is older
            self.log.error("mark_running_failed", error=f"{type(exc).__name__}: {exc}")
        return True

    async def _start(self) -> Outcome:
        s = self.state
        started = self.clock()
        self.busy_since = started
        try:
            outcome = await self.ports.restart(self.pacing.timeout)
        finally:
            self.busy_since = None
        took = self.clock() - started
        s.dhcpd_last_restart_at, s.dhcpd_last_restart_ok = now_iso(), outcome.ok
        if outcome.ok:
            s.dhcpd_restart_s = round(took, 2)
            if took > TIGHT_SHARE * self.pacing.timeout:
                self.log.warning(
                    "restart_slow",
                    service="dhcpd",
                    seconds=round(took, 1),
                    restart_timeout=self.pacing.timeout,
                )
        return outcome

    async def _restart(self) -> None:
        s = self.state
        applied = s.dhcpd_applied_set
        outcome = await self._start()
        if outcome.ok:
            s.dhcpd_running_set, s.dhcpd_error, s.dhcpd_failures = applied, "", 0
            try:
                s.dhcpd_running_generation = await self.ports.mark_running()
            except Exception as exc:  # dhcpd is up: only the rollback target is older
                self.log.error("mark_running_failed", error=f"{type(exc).__name__}: {exc}")
            self.log.info(
                "restarted",
                service="dhcpd",
                generation=s.dhcpd_running_generation,
                seconds=s.dhcpd_restart_s,
            )
            self._pace(failed=False)
            return
        s.dhcpd_failures += 1
        s.dhcpd_error = outcome.describe()
        self.log.error(
            "restart_failed", service="dhcpd", error=s.dhcpd_error, failures=s.dhcpd_failures
        )
        if not s.dhcpd_running_set or s.dhcpd_running_set == applied:
            # nothing older known to work, or it is this very set: keep it, retry later
            self._pace(failed=True)
            return
        generation = await self.ports.rollback()
        if generation is None:
            self._pace(failed=True)
            return
        s.rollbacks += 1
        s.generation = generation
        if self.published_set:
            s.held_set = self.published_set
            s.held_reason = "dhcpd did not come up with it; rolled back to the set it ran"
        s.dhcpd_applied_set = await self.ports.applied()
        self.log.warning("rolled_back", generation=generation, error=s.dhcpd_error)
        again = await self._start()
        if again.ok:
            s.dhcpd_error, s.dhcpd_failures = "", 0
            self.log.info("restarted", service="dhcpd", generation=generation, rollback=True)
            self._pace(failed=False)
        else:
            s.dhcpd_error = "after rollback: " + again.describe()
            self.log.error("rollback_restart_failed", service="dhcpd", error=s.dhcpd_error)
            self._pace(failed=True)

    # --- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        """Step whenever poked or when a paced restart becomes allowed; forever (cancel it)."""
        while True:
            self.wake.clear()  # before the step: a poke during it is not lost
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.wait())
