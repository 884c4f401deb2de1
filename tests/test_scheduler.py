"""The scheduler's rules with a fake clock: periodic rebuild under traffic, retries, debounce,
poll pacing and the UTC-offset timer (issue 10, items 1, 2 and 13)."""

from __future__ import annotations

import datetime as dt

import pytest

from provhad.config import WatchConfig
from provhad.model import MIN_REBUILD_INTERVAL
from provhad.scheduler import (
    MAX_PAUSE_INTERVALS,
    RETRY_FIRST,
    RETRY_MAX,
    Debounce,
    Scheduler,
    Trigger,
    covered,
    next_offset_change,
    poll_pause,
    retry_pause,
)

WALL = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def make(tz: str = "UTC") -> tuple[Scheduler, Clock]:
    clock = Clock()
    return Scheduler(tz, clock, wall=lambda: WALL + dt.timedelta(seconds=clock.now - 500)), clock


def kinds(s: Scheduler) -> list[str]:
    return [t.kind for t in s.due()]


def test_periodic_rebuild_runs_every_interval_under_constant_traffic() -> None:
    """Item 2: a change at least once per interval must not postpone the full read."""
    s, clock = make()
    s.set_interval(600)
    s.cycle_done(frozenset({"startup"}), ok=True)
    fired = 0
    for _ in range(3 * 600 // 30):
        clock.now += 30
        if "periodic" in kinds(s):
            fired += 1
            s.cycle_done(frozenset({"periodic", "poll"}), ok=True)
        s.cycle_done(frozenset({"poll"}), ok=True)  # traffic: a change every 30 s
    assert fired == 3


def test_only_a_full_read_resets_the_periodic_count() -> None:
    s, clock = make()
    s.set_interval(600)
    s.cycle_done(frozenset({"startup"}), ok=True)
    clock.now += 500
    s.cycle_done(frozenset({"sighup"}), ok=True)  # a full read: the count starts again
    clock.now += 500
    assert kinds(s) == []
    clock.now += 100
    assert kinds(s) == ["periodic"]


def test_failed_cycle_is_retried_with_backoff_and_timers_stay_armed() -> None:
    s, clock = make()
    s.set_interval(600)
    s.cycle_done(frozenset({"startup"}), ok=False)
    assert s.wait() == pytest.approx(RETRY_FIRST)
    clock.now += RETRY_FIRST
    assert kinds(s) == ["retry"]
    s.cycle_done(frozenset({"retry"}), ok=False)
    assert s.wait() == pytest.approx(2 * RETRY_FIRST)
    clock.now += 600
    assert sorted(kinds(s)) == ["periodic", "retry"]  # the periodic timer was not lost
    s.cycle_done(frozenset({"periodic", "retry"}), ok=True)
    assert s.retry_due is None and s.failures == 0
    assert s.wait() == pytest.approx(600)


def test_failed_periodic_rebuild_does_not_loop() -> None:
    s, clock = make()
    s.set_interval(600)
    clock.now += 600
    assert kinds(s) == ["periodic"]
    s.cycle_done(frozenset({"periodic"}), ok=False)
    assert kinds(s) == []  # re-armed; the retry timer takes over
    assert s.wait() == pytest.approx(RETRY_FIRST)


def test_retry_pause_grows_and_is_capped() -> None:
    assert [retry_pause(n) for n in (1, 2, 3)] == [RETRY_FIRST, 2 * RETRY_FIRST, 4 * RETRY_FIRST]
    assert retry_pause(50) == RETRY_MAX


def test_rebuild_interval_has_a_lower_bound_and_a_shorter_one_applies_now() -> None:
    """Item 13: slave_config_rebuild_interval = 0 must not mean a full rebuild every second."""
    s, clock = make()
    s.set_interval(0)
    assert s.interval == MIN_REBUILD_INTERVAL
    s.set_interval(7200)
    s.cycle_done(frozenset({"startup"}), ok=True)
    s.set_interval(120)
    clock.now += 120
    assert kinds(s) == ["periodic"]


def test_dst_timer_fires_after_the_offset_change_and_is_rearmed_by_any_cycle() -> None:
    s, clock = make("Europe/Berlin")
    change = next_offset_change("Europe/Berlin", WALL)
    assert change is not None
    assert s.wait() == pytest.approx(min(3600, (change - WALL).total_seconds() + 1))
    clock.now += (change - WALL).total_seconds() + 1
    assert "dst" in kinds(s)
    assert s.dst_due is None
    s.cycle_done(frozenset({"dst"}), ok=False)
    assert s.dst_due is not None  # re-armed even after a failed cycle


def test_debounce_quiet_period_and_max_delay() -> None:
    clock = Clock()
    w = WatchConfig(quiet_period=1.0)
    d = Debounce(w.quiet_period, w.max_delay, clock)
    assert d.remaining() == 0.0
    d.add()
    assert d.remaining() == pytest.approx(w.quiet_period)
    for _ in range(100):  # a trigger every half quiet period: closed by max_delay
        clock.now += w.quiet_period / 2
        if d.remaining() == 0:
            break
        d.add()
    assert clock.now - 500 == pytest.approx(w.max_delay, abs=w.quiet_period)


def test_by_default_a_trigger_is_not_held_back() -> None:
    """Cycles cost O(change) and host changes go live without a restart: by default the
    burst closes with its first trigger (what comes during the cycle waits for the next)."""
    clock = Clock()
    w = WatchConfig()
    d = Debounce(w.quiet_period, w.max_delay, clock)
    d.add()
    assert d.remaining() == 0.0
    # the configfile build (every configfile) still collects its requests
    hook = Debounce(w.periodic_command_quiet_period, w.max_delay, clock)
    hook.add()
    assert hook.remaining() == pytest.approx(1.0)


def test_debounce_waits_for_quiet() -> None:
    clock = Clock()
    d = Debounce(1.0, 15.0, clock)
    d.add()
    clock.now += 0.9
    d.add()
    clock.now += 0.9
    assert d.remaining() == pytest.approx(0.1)
    clock.now += 0.1
    assert d.remaining() == 0.0


def test_failed_or_slow_poll_never_lengthens_the_pause() -> None:
    """Item 1: a poll that failed after its deadline (a frozen node) is followed by an
    ordinary pause, not 9x the time it took."""
    assert poll_pause(1.0, None, 0.1) == 1.0
    assert poll_pause(1.0, 0.0, 0.1) == 1.0


def test_costly_fingerprints_stretch_the_pause_within_a_cap() -> None:
    assert poll_pause(1.0, 0.05, 0.1) == 1.0
    assert poll_pause(1.0, 0.2, 0.1) == pytest.approx(1.8)
    assert poll_pause(1.0, 15.0, 0.1) == MAX_PAUSE_INTERVALS


def test_a_change_queued_before_the_last_read_began_is_covered() -> None:
    """A poll's or an MQTT request's trigger queued before the snapshot's read began: that
    read holds the change. One queued during the read (or after) is not covered, nor is any
    timer, SIGHUP or retry, nor anything before a first read."""
    assert covered(Trigger("poll", at=9.0), 10.0)
    assert covered(Trigger("mqtt", at=9.999), 10.0)
    assert not covered(Trigger("poll", at=10.0), 10.0)
    assert not covered(Trigger("mqtt", at=10.5), 10.0)
    assert not covered(Trigger("poll", at=9.0), None)
    assert not covered(Trigger("poll"), 10.0)
    for kind in ("periodic", "retry", "sighup", "dst", "startup"):
        assert not covered(Trigger(kind, at=1.0), 10.0)
