"""Tests that kill mutants of provhad/scheduler.py which the other tests let live."""

from __future__ import annotations

import datetime as dt

import pytest

from provhad.scheduler import Debounce, Scheduler, poll_pause, retry_pause


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_retry_pauses_an_operator_sees() -> None:
    # the documented values, not the constants: a changed constant changes behaviour
    assert [retry_pause(n) for n in (1, 2, 3, 7, 8, 20)] == [5, 10, 20, 300, 300, 300]


def test_the_poll_pause_is_at_most_three_intervals() -> None:
    assert poll_pause(1.0, 100.0, 0.5) == 3.0
    assert poll_pause(1.0, 0.5, 0.25) == 1.5  # 0.5 s of work at most a quarter of the time


def test_a_burst_is_closed_by_max_delay_however_busy() -> None:
    clock = Clock()
    burst = Debounce(1.0, 5.0, clock)
    burst.add()
    for _ in range(4):
        clock.now += 0.9
        burst.add()
        assert burst.remaining() == pytest.approx(1.0)
    clock.now += 0.9  # 4.5 s after the first trigger
    burst.add()
    assert burst.remaining() == pytest.approx(0.5)


def test_a_longer_interval_keeps_the_pending_deadline() -> None:
    clock = Clock()
    s = Scheduler("UTC", clock, wall=lambda: dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    due = s.periodic_due
    clock.now += 10
    s.set_interval(s.interval * 4)
    assert s.periodic_due == due


def test_the_periodic_timer_fires_at_its_deadline_and_wait_is_never_negative() -> None:
    clock = Clock()
    s = Scheduler("UTC", clock, wall=lambda: dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    clock.now = s.periodic_due
    assert s.wait() == 0.0
    assert [t.kind for t in s.due()] == ["periodic"]
    clock.now += s.interval + 50
    assert s.wait() == 0.0


def test_a_failed_cycle_rearms_the_dst_timer() -> None:
    clock = Clock()
    wall = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)  # 30 min before Europe's change
    s = Scheduler("Europe/Berlin", clock, wall=lambda: wall + dt.timedelta(seconds=clock.now - 100))
    clock.now += 1800 + 1
    assert [t.kind for t in s.due()] == ["dst"]
    s.cycle_done(frozenset({"dst"}), ok=False)
    assert s.dst_due is not None  # the next change, in autumn


def test_a_good_retry_is_a_full_read_and_restarts_the_periodic_count() -> None:
    clock = Clock()
    s = Scheduler("UTC", clock, wall=lambda: dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    clock.now += 100
    s.cycle_done(frozenset({"retry"}), ok=True)
    assert s.periodic_due == clock.now + s.interval
