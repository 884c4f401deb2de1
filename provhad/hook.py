"""The configfile hook: NMS Prime's TFTP configfile build, run when its inputs change.

Upstream's slave rebuilds the modem and MTA configfiles under /tftpboot with ``php artisan
nms:configfile``; a missing or stale one leaves a modem stuck in init(o). provhad does not
render them itself; it runs the configured command (``[watch] periodic_command``):

- after any change of the columns a configfile is built from (``db.HOOK_WATCHED``), collected
  over ``periodic_command_quiet_period`` (at most ``max_delay``), and at every periodic rebuild;
- never two at once: a request that arrives during a run makes exactly one more run after it;
- bounded by ``periodic_command_timeout`` (killed with its process group);
- its outcome goes to the state file (STATUS, ``provhad status``, ``provhad check``) and the
  journal (``PROVHAD_EVENT=configfile_build``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from provhad import services
from provhad.scheduler import Clock, Debounce
from provhad.state import State, now_iso


class Hook:
    """Runs one command on request, debounced and one at a time; :meth:`run` is its task."""

    def __init__(
        self,
        command: Sequence[str],
        timeout: float,
        debounce: tuple[float, float],
        state: State,
        report: Callable[[], None],
        log: Any,
        clock: Clock = time.monotonic,
    ) -> None:
        self.command = tuple(command)
        self.timeout = timeout
        self.debounce = debounce
        self.state = state
        self.report = report
        self.log = log
        self.clock = clock
        self.reasons: set[str] = set()
        self.burst = Debounce(*debounce, clock)
        self.wake = asyncio.Event()
        self.running = False
        self.runs = 0

    def request(self, reason: str) -> None:
        """Ask for a run (soon, once the burst of requests is over)."""
        if not self.command:
            return
        self.reasons.add(reason)
        self.burst.add()
        self.wake.set()

    async def run_once(self) -> services.Outcome:
        """One run now; the outcome is recorded and reported."""
        reasons, self.reasons = sorted(self.reasons), set()
        self.burst = Debounce(*self.debounce, self.clock)
        self.running = True
        started = self.clock()
        try:
            outcome = await services.run(self.command, self.timeout)
        finally:
            self.running = False
        self.runs += 1
        s = self.state
        s.hook_last_at, s.hook_ok = now_iso(), outcome.ok
        s.hook_seconds = round(self.clock() - started, 2)
        s.hook_error = "" if outcome.ok else outcome.describe()
        (self.log.info if outcome.ok else self.log.error)(
            "configfile_build",
            ok=outcome.ok,
            seconds=s.hook_seconds,
            reasons=reasons,
            result=outcome.describe(),
        )
        self.report()
        return outcome

    async def run(self) -> None:
        """Forever: wait for requests, let the burst end, run; cancel to stop."""
        while True:
            await self.wake.wait()
            while (left := self.burst.remaining()) > 0:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), left)
            self.wake.clear()
            if self.reasons:
                await self.run_once()
