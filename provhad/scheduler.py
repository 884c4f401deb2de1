"""When to rebuild: triggers, timers, debounce and poll pacing, as pure logic over a clock.

Nothing here sleeps or does I/O; the daemon asks what is due and how long to wait, then waits
itself. Every rule takes the time from an injectable clock, so each one is unit-tested with a
fake clock (tests/test_scheduler.py):

- the periodic rebuild fires every ``interval`` seconds whatever the traffic; only a successful
  full read (which is what the periodic rebuild does) moves it;
- a failed cycle arms a retry with a growing pause, and leaves every other timer armed;
- a poll or MQTT trigger queued before the last snapshot's read began is dropped: that read
  holds the change already;
- a burst of triggers is collected until ``quiet_period`` passes without one, at most
  ``max_delay`` after the first (the daemon's default quiet period is 0: a trigger starts a
  cycle at once, and what comes during the cycle is taken by the next one);
- the pause after a poll is the poll interval, stretched only by the server's cost of a
  *successful* fingerprint (so polls keep the database busy at most ``max_poll_share``), and
  never by more than ``MAX_PAUSE_INTERVALS`` intervals; a failed or slow-to-fail poll never
  lengthens it.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from provhad.model import DEFAULT_REBUILD_INTERVAL, MIN_REBUILD_INTERVAL

Clock = Callable[[], float]

#: Seconds before the first retry of a failed cycle; doubled per failure up to RETRY_MAX.
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
#: The pause after a poll is at most this many poll intervals, however costly the poll.
MAX_PAUSE_INTERVALS = 3.0


@dataclass(frozen=True)
class Trigger:
    """Why a rebuild is wanted."""

    kind: str  # startup, poll, periodic, mqtt, sighup, dst, retry
    detail: str = ""
    #: when it was queued (the clock's time); None: a timer's, never covered (see covered())
    at: float | None = None


#: Triggers that only say "the database changed": a snapshot read after them has the change.
CHANGE_NEWS = frozenset({"poll", "mqtt"})


def covered(trigger: Trigger, read_started: float | None) -> bool:
    """Whether a snapshot whose read began at ``read_started`` already holds what
    ``trigger`` reports: a poll queues its trigger after its fingerprints were read, and an
    MQTT request comes after the master's commit, so a snapshot begun later (a causal read)
    sees that commit. Such a trigger, queued while that cycle ran, would only cost a cycle
    that finds nothing new. Timers, SIGHUP and retries are never covered."""
    return (
        trigger.kind in CHANGE_NEWS
        and trigger.at is not None
        and read_started is not None
        and trigger.at < read_started
    )


#: Triggers whose cycle reads every row again rather than only the changed chunks.
FULL_READ = frozenset({"startup", "periodic", "sighup", "retry"})


def retry_pause(failures: int, first: float = RETRY_FIRST, most: float = RETRY_MAX) -> float:
    """Seconds before retrying after ``failures`` failed attempts in a row (>= 1)."""
    return float(min(most, first * 2 ** max(0, failures - 1)))


def poll_pause(interval: float, cost: float | None, share: float) -> float:
    """Seconds to wait before the next poll.

    ``cost``: the seconds a successful fingerprint took (the server's work), None when the poll
    failed or only read the commit position. The pause is stretched so that fingerprinting
    keeps the server busy at most ``share`` of the time, capped at a few intervals so a change
    is still seen within seconds.
    """
    if cost is None or cost <= 0:
        return interval
    stretched = cost * (1 - share) / share
    return max(interval, min(stretched, MAX_PAUSE_INTERVALS * interval))


def next_offset_change(
    timezone: str, after: dt.datetime, horizon_days: int = 400
) -> dt.datetime | None:
    """The next instant (a whole second) at which the UTC offset of ``timezone`` changes."""
    tz = zoneinfo.ZoneInfo(timezone)
    base = int(after.timestamp())

    def offset(ts: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone(tz).utcoffset()

    start = offset(base)
    lo = base
    for day in range(1, horizon_days + 1):
        hi = base + day * 86400
        if offset(hi) != start:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == start else (lo, mid)
            return dt.datetime.fromtimestamp(hi, dt.UTC)
        lo = hi
    return None


class Debounce:
    """Collects a burst: closed ``quiet`` seconds after the last trigger, at most ``most``
    seconds after the first."""

    def __init__(self, quiet: float, most: float, clock: Clock) -> None:
        self.quiet, self.most, self.clock = quiet, most, clock
        self.first: float | None = None
        self.last = 0.0

    def add(self) -> None:
        now = self.clock()
        if self.first is None:
            self.first = now
        self.last = now

    def remaining(self) -> float:
        """Seconds until the burst is closed (0: closed now)."""
        if self.first is None:
            return 0.0
        now = self.clock()
        end = min(self.last + self.quiet, self.first + self.most)
        return max(0.0, end - now)


class Scheduler:
    """The daemon's timers: periodic rebuild, retry after a failure, the next UTC-offset change.

    The daemon reports each cycle's outcome with :meth:`cycle_done`; :meth:`due` returns the
    timers that fired (and re-arms them), :meth:`wait` how long to sleep until the next one.
    """

    def __init__(
        self,
        timezone: str,
        clock: Clock = time.monotonic,
        wall: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall or (lambda: dt.datetime.now(dt.UTC))
        self.timezone = timezone
        self.interval: float = DEFAULT_REBUILD_INTERVAL
        self.periodic_due: float = clock() + self.interval
        self.retry_due: float | None = None
        self.failures = 0
        self.dst_due: float | None = None
        self.arm_dst()

    def set_interval(self, seconds: int | float) -> None:
        """provha.slave_config_rebuild_interval as read; bounded below, and the pending
        deadline moves with it (a shorter interval takes effect now)."""
        seconds = max(MIN_REBUILD_INTERVAL, float(seconds))
        if seconds != self.interval:
            self.periodic_due = min(self.periodic_due, self.clock() + seconds)
            self.interval = seconds

    def arm_dst(self) -> None:
        now = self.wall()
        nxt = next_offset_change(self.timezone, now)
        self.dst_due = None if nxt is None else self.clock() + (nxt - now).total_seconds() + 1

    def cycle_done(self, triggers: frozenset[str], ok: bool) -> None:
        """Re-arm after a cycle: a successful full read restarts the periodic count; a failure
        arms a retry with backoff; every outcome re-arms the UTC-offset timer."""
        now = self.clock()
        if ok:
            self.failures, self.retry_due = 0, None
            if not FULL_READ.isdisjoint(triggers):
                self.periodic_due = now + self.interval
        else:
            self.failures += 1
            self.retry_due = now + retry_pause(self.failures)
        self.arm_dst()

    def due(self) -> list[Trigger]:
        """The timers that fired, each re-armed (the periodic one a whole interval on, so a
        failed periodic rebuild is retried by the retry timer, not in a loop)."""
        now = self.clock()
        fired = []
        if now >= self.periodic_due:
            fired.append(Trigger("periodic"))
            self.periodic_due = now + self.interval
        if self.retry_due is not None and now >= self.retry_due:
            fired.append(Trigger("retry", f"after {self.failures} failed cycles"))
            self.retry_due = None
        if self.dst_due is not None and now >= self.dst_due:
            fired.append(Trigger("dst"))
            self.dst_due = None
        return fired

    def wait(self) -> float:
        """Seconds until the next timer fires (0 if one is due)."""
        deadlines = [d for d in (self.periodic_due, self.retry_due, self.dst_due) if d is not None]
        return max(0.0, min(deadlines) - self.clock())
