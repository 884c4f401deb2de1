"""The dhcpd supervisor's rules, with fake services and a fake clock (every path of issue 10's
items 3, 4 and 11); the real dhcpd behind it is exercised in tests/test_daemon.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from provhad.services import Outcome
from provhad.state import State
from provhad.supervisor import BACKOFF_FIRST, LiveUpdate, Pacing, Supervisor

OK = Outcome(True, 0, "")
FAIL = Outcome(False, 1, "dhcpd: no subnet declaration for eth0")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = debug = _add

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@dataclass
class FakeDhcpd:
    """The live files (a digest per generation), the generation store and dhcpd itself."""

    clock: Clock
    live: str = "set-1"
    generation: int = 1
    running_set: str | None = None  # what mark_running kept
    running_gen: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    restart_takes: float = 2.0
    rollbacks: int = 0
    rollback_error: Exception | None = None
    #: what the next live updates do (default: not possible for the change)
    live_updates: list[LiveUpdate | Exception] = field(default_factory=list)
    live_calls: int = 0

    async def applied(self) -> str:
        return self.live

    async def restart(self, timeout: float) -> Outcome:
        self.restarts.append(self.live)
        self.clock.now += self.restart_takes
        return self.outcomes.pop(0) if self.outcomes else OK

    async def mark_running(self) -> int | None:
        self.running_set, self.running_gen = self.live, self.generation
        return self.generation

    async def rollback(self) -> int | None:
        if self.rollback_error is not None:
            raise self.rollback_error
        if self.running_set is None:
            return None
        self.rollbacks += 1
        self.generation += 1
        self.live = self.running_set
        return self.generation

    async def live_update(self) -> LiveUpdate:
        self.live_calls += 1
        upd = self.live_updates.pop(0) if self.live_updates else LiveUpdate(reason="pools")
        if isinstance(upd, Exception):
            raise upd
        return upd

    def publish(self, digest: str) -> None:
        self.live = digest
        self.generation += 1


def make(
    min_interval: float = 30.0, timeout: float = 90.0, state: State | None = None
) -> tuple[Supervisor, FakeDhcpd, Clock, Log, list[int]]:
    clock, log = Clock(), Log()
    fake = FakeDhcpd(clock)
    reports: list[int] = []
    sup = Supervisor(
        fake,
        state or State(),
        Pacing(min_interval, timeout),
        lambda: reports.append(1),
        log,
        clock,
    )
    return sup, fake, clock, log, reports


async def test_first_start_restarts_once_and_remembers_what_runs() -> None:
    sup, fake, _clock, _log, reports = make()
    await sup.step()
    assert fake.restarts == ["set-1"]
    assert sup.state.dhcpd_running_set == "set-1" and fake.running_set == "set-1"
    assert not sup.state.restart_pending and sup.wait() is None
    await sup.step()  # nothing changed: no restart
    assert fake.restarts == ["set-1"] and reports


async def test_files_changed_behind_our_back_restart_dhcpd() -> None:
    """Item 4: a set published by `provhad render` (or before a crash of the daemon) is
    noticed from the files, whatever the state file said."""
    state = State(dhcpd_applied_set="set-1", dhcpd_running_set="set-1")
    sup, fake, _clock, _log, _ = make(state=state)
    fake.live = "set-render"
    await sup.step()
    assert fake.restarts == ["set-render"]
    assert sup.state.dhcpd_running_set == "set-render"


async def test_pacing_counts_from_the_end_of_a_restart() -> None:
    sup, fake, clock, _log, _ = make(min_interval=30.0)
    fake.restart_takes = 25.0
    await sup.step()
    end = clock.now
    fake.publish("set-2")
    clock.now = end + 29.0
    await sup.step()
    assert fake.restarts == ["set-1"]  # 54 s after the start, but 29 s after the end
    assert sup.wait() == pytest.approx(1.0)
    clock.now = end + 30.0
    await sup.step()
    assert fake.restarts == ["set-1", "set-2"]


async def test_failed_restart_rolls_back_to_what_dhcpd_ran_not_to_the_last_swap() -> None:
    """Item 3: gen 2 changes one file, its restart waits; gen 3 changes another, the restart
    fails: the set dhcpd ran (gen 1) comes back whole, not only gen 3's file."""
    sup, fake, clock, log, _ = make(min_interval=30.0)
    await sup.step()  # gen 1 runs
    fake.publish("set-2")
    sup.published_set = "render-2"
    await sup.step()  # paced: not yet
    fake.publish("set-3")
    sup.published_set = "render-3"
    clock.now += 30.0
    fake.outcomes = [FAIL, OK]
    await sup.step()
    assert fake.restarts == ["set-1", "set-3", "set-1"]
    assert fake.live == "set-1" and fake.rollbacks == 1
    assert sup.state.held_set == "render-3"
    assert sup.state.generation == fake.generation
    assert sup.state.dhcpd_last_restart_ok and not sup.state.restart_pending
    assert "rolled_back" in log.names()


async def test_first_install_failure_keeps_the_new_set_and_retries_with_backoff() -> None:
    sup, fake, clock, log, _ = make(min_interval=0.0)
    fake.outcomes = [FAIL, FAIL, FAIL, OK]
    await sup.step()
    assert fake.rollbacks == 0 and fake.live == "set-1"  # nothing deleted, nothing rolled back
    assert not sup.state.dhcpd_last_restart_ok and "no subnet" in sup.state.dhcpd_error
    assert sup.wait() == pytest.approx(BACKOFF_FIRST)
    clock.now += BACKOFF_FIRST
    await sup.step()
    assert sup.wait() == pytest.approx(2 * BACKOFF_FIRST)  # it grows
    clock.now += 2 * BACKOFF_FIRST - 0.5
    await sup.step()
    assert len(fake.restarts) == 2  # not before the backoff ended
    clock.now += 0.5
    await sup.step()
    clock.now += 4 * BACKOFF_FIRST
    await sup.step()
    assert len(fake.restarts) == 4
    assert sup.state.dhcpd_last_restart_ok and sup.state.dhcpd_failures == 0
    assert log.names().count("restart_failed") == 3


async def test_refused_running_set_is_retried_not_rolled_back_onto_itself() -> None:
    sup, fake, clock, _log, _ = make(min_interval=0.0)
    await sup.step()
    fake.outcomes = [FAIL]
    sup.state.dhcpd_last_restart_ok = False  # e.g. dhcpd failed at boot on the running set
    clock.now += 1
    await sup.step()
    assert fake.rollbacks == 0 and sup.wait() == pytest.approx(BACKOFF_FIRST)


async def test_rollback_that_fails_is_reported_and_retried() -> None:
    """Item 9: an error of the file system during a rollback must not end the daemon."""
    sup, fake, clock, _log, reports = make(min_interval=0.0)
    await sup.step()
    fake.publish("set-2")
    fake.outcomes = [FAIL]
    fake.rollback_error = OSError(28, "No space left on device")
    clock.now += 1
    await sup.step()
    assert "No space left" in sup.state.dhcpd_error
    assert not sup.state.dhcpd_last_restart_ok
    assert sup.wait() is not None and sup.wait() > 0  # type: ignore[operator]
    fake.rollback_error = None
    clock.now += 300
    await sup.step()  # set-2 is tried again and now comes up
    assert sup.state.dhcpd_running_set == "set-2" and sup.state.dhcpd_last_restart_ok
    assert reports


async def test_rollback_whose_restart_fails_too_is_retried() -> None:
    sup, fake, clock, log, _ = make(min_interval=0.0)
    await sup.step()
    fake.publish("set-2")
    fake.outcomes = [FAIL, FAIL]
    clock.now += 1
    await sup.step()
    assert fake.live == "set-1" and not sup.state.dhcpd_last_restart_ok
    assert "after rollback" in sup.state.dhcpd_error
    assert "rollback_restart_failed" in log.names()
    clock.now += BACKOFF_FIRST * 4
    await sup.step()
    assert sup.state.dhcpd_last_restart_ok and fake.restarts[-1] == "set-1"


async def test_slow_restart_is_reported_against_its_timeout() -> None:
    sup, fake, _clock, log, _ = make(timeout=60.0)
    fake.restart_takes = 50.0
    await sup.step()
    assert sup.state.dhcpd_restart_s == pytest.approx(50.0)
    assert "restart_slow" in log.names()


async def test_no_files_no_restart() -> None:
    sup, fake, _clock, _log, _ = make()
    fake.live = ""
    await sup.step()
    assert fake.restarts == [] and sup.wait() is None


async def test_rollback_target_that_cannot_be_kept_causes_no_restart_loop() -> None:
    """dhcpd came up; only keeping its files as the rollback target failed (a full /var/lib):
    that is reported, and dhcpd is not restarted again for it."""
    sup, fake, clock, log, _ = make(min_interval=0.0)

    async def full_disk() -> int | None:
        raise OSError(28, "No space left on device")

    fake.mark_running = full_disk  # type: ignore[method-assign]
    await sup.step()
    assert "mark_running_failed" in log.names()
    assert sup.state.dhcpd_last_restart_ok and not sup.state.restart_pending
    clock.now += 600
    await sup.step()
    assert fake.restarts == ["set-1"]


async def test_host_changes_go_live_without_a_restart() -> None:
    """Issue 12: only hosts changed and OMAPI took them: no restart, not even paced; the
    live set becomes what dhcpd runs (and the rollback target)."""
    sup, fake, _clock, log, _ = make(min_interval=30.0)
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, deletes=1, adds=2)]
    await sup.step()
    assert fake.restarts == ["set-1"]
    assert sup.state.dhcpd_running_set == "set-2" and not sup.state.restart_pending
    assert fake.running_set == "set-2" and sup.state.omapi_hosts == 3
    assert "omapi_applied" in log.names() and sup.wait() is None


async def test_failed_live_update_falls_back_to_a_paced_restart() -> None:
    sup, fake, clock, log, _ = make(min_interval=30.0)
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [
        LiveUpdate(attempted=True, reason="OMAPI: not authorized"),
        OSError("connection reset"),
    ]
    await sup.step()
    assert fake.restarts == ["set-1"]  # paced: the restart waits for the interval
    assert "not authorized" in sup.state.omapi_fallback
    clock.now += 30.0
    await sup.step()
    assert fake.restarts == ["set-1", "set-2"] and fake.live_calls == 2
    assert "connection reset" in sup.state.omapi_fallback
    assert log.names().count("omapi_fallback") == 2


async def test_no_live_update_while_dhcpd_is_down() -> None:
    sup, fake, clock, _log, _ = make(min_interval=0.0)
    fake.outcomes = [FAIL]
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, adds=1)]
    clock.now += BACKOFF_FIRST
    await sup.step()
    assert fake.live_calls == 0 and fake.restarts == ["set-1", "set-2"]


async def test_host_part_goes_live_at_once_while_the_rest_waits_for_the_paced_restart() -> None:
    """Hosts and, say, blocked.conf changed together: the hosts are served by OMAPI now, the
    restart the other file needs keeps its pacing."""
    sup, fake, clock, log, _ = make(min_interval=30.0)
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [LiveUpdate(True, True, "", 0, 1, partial=True)]
    await sup.step()
    assert fake.restarts == ["set-1"] and sup.state.omapi_hosts == 1
    assert sup.state.restart_pending and fake.running_set == "set-1"
    assert any(e == "omapi_applied" and kw["partial"] for e, kw in log.events)
    clock.now += 30.0
    await sup.step()
    assert fake.restarts == ["set-1", "set-2"] and not sup.state.restart_pending


async def test_subclass_member_changes_are_counted_apart_from_hosts() -> None:
    """blocked.conf or modems-clients-public.conf by OMAPI: the journal and the state say how
    many members left and joined; omapi_hosts still counts hosts only."""
    sup, fake, _clock, log, _ = make(min_interval=30.0)
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [
        LiveUpdate(applied=True, attempted=True, adds=1, member_deletes=2, member_adds=3)
    ]
    await sup.step()
    assert fake.restarts == ["set-1"] and sup.state.dhcpd_running_set == "set-2"
    assert sup.state.omapi_hosts == 1
    assert sup.state.omapi_last.endswith(" -0 +1 subclass -2 +3"), sup.state.omapi_last
    applied = [kw for e, kw in log.events if e == "omapi_applied"]
    assert applied and (applied[0]["subclass_deletes"], applied[0]["subclass_adds"]) == (2, 3)


async def test_a_live_update_counts_as_busy_so_the_main_loop_beats_while_it_waits() -> None:
    """The main loop waits for the supervisor's lock to publish; it feeds the watchdog only
    while the supervisor is busy with something bounded (a restart, or a live update whose
    OMAPI requests each have a deadline), never for a hung supervisor."""
    sup, fake, _clock, _log, _ = make(min_interval=30.0)
    await sup.step()
    seen: list[float | None] = []
    plain = fake.live_update

    async def watched() -> LiveUpdate:
        seen.append(sup.busy_since)
        return await plain()

    fake.live_update = watched  # type: ignore[method-assign]
    fake.publish("set-2")
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, adds=1)]
    await sup.step()
    fake.publish("set-3")
    fake.live_updates = [RuntimeError("OMAPI thread died")]
    await sup.step()
    assert len(seen) == 2 and all(since is not None for since in seen)
    assert sup.busy_since is None  # and idle again, after success and after a failure
