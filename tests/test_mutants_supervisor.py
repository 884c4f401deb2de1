"""Tests that kill mutants of provhad/supervisor.py which the other tests let live."""

from __future__ import annotations

import pytest

from provhad.services import Outcome
from provhad.state import State
from provhad.supervisor import LiveUpdate
from tests.test_supervisor import FAIL, make


async def test_no_files_no_restart_even_after_a_failed_start() -> None:
    sup, fake, _clock, _log, _ = make(state=State(dhcpd_last_restart_ok=False))
    fake.live = ""
    await sup.step()
    assert fake.restarts == [] and sup.wait() is None


async def test_the_backoff_an_operator_sees_after_failed_starts() -> None:
    sup, fake, clock, _log, _ = make(min_interval=0.0)
    fake.outcomes = [FAIL, FAIL, FAIL]
    pauses = []
    for _ in range(3):
        clock.now = sup.not_before
        await sup.step()
        pauses.append(sup.wait())
    assert pauses == [5.0, 10.0, 20.0]
    assert sup.state.dhcpd_failures == 3 and not sup.state.dhcpd_last_restart_ok


async def test_an_exception_in_a_restart_is_a_failed_start() -> None:
    sup, fake, _clock, log, _ = make(min_interval=0.0)

    async def broken(timeout: float) -> Outcome:
        raise OSError("read-only file system")

    fake.restart = broken  # type: ignore[method-assign]
    await sup.step()
    s = sup.state
    assert not s.dhcpd_last_restart_ok and s.dhcpd_failures == 1
    assert s.dhcpd_error == "OSError: read-only file system" and sup.wait() == 5.0
    assert "restart_failed" in log.names()


@pytest.mark.parametrize(("took", "slow"), [(44.0, False), (46.0, True)])
async def test_a_restart_is_slow_beyond_half_its_timeout(took: float, slow: bool) -> None:
    sup, fake, _clock, log, _ = make(timeout=90.0)
    fake.restart_takes = took
    await sup.step()
    assert ("restart_slow" in log.names()) is slow


async def test_a_good_restart_after_a_rollback_is_counted_and_paced_as_a_success() -> None:
    sup, fake, clock, _log, _ = make(min_interval=0.0)
    await sup.step()  # dhcpd comes up with set-1
    fake.publish("set-2")
    fake.outcomes = [FAIL, Outcome(True, 0, "")]
    await sup.step()
    assert fake.rollbacks == 1 and sup.state.rollbacks == 1
    assert sup.not_before == clock.now  # no backoff: dhcpd runs


# --- the live update (OMAPI) -----------------------------------------------------------------


async def test_no_live_update_before_dhcpd_ever_ran() -> None:
    sup, fake, _clock, _log, _ = make()
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, adds=1)]
    await sup.step()
    assert fake.live_calls == 0 and fake.restarts == ["set-1"]


async def test_live_updates_add_up_and_say_what_they_did() -> None:
    sup, fake, _clock, log, _ = make()
    await sup.step()
    for n, digest in enumerate(["set-2", "set-3"]):
        fake.publish(digest)
        fake.live_updates = [LiveUpdate(applied=True, attempted=True, deletes=1 + n, adds=3)]
        await sup.step()
    s = sup.state
    assert fake.restarts == ["set-1"] and s.omapi_hosts == 4 + 5
    assert s.omapi_last.endswith(" -2 +3") and s.omapi_fallback == ""
    assert "omapi_fallback" not in log.names()


async def test_a_change_omapi_cannot_carry_is_no_fallback() -> None:
    sup, fake, clock, log, _ = make()
    await sup.step()
    fake.publish("set-2")  # the fake's default: not possible (pools changed)
    clock.now = sup.not_before
    await sup.step()
    assert fake.restarts == ["set-1", "set-2"] and fake.live_calls == 1
    assert sup.state.omapi_fallback == "" and "omapi_fallback" not in log.names()


async def test_a_live_update_that_cannot_move_the_rollback_target_restarts_nothing() -> None:
    sup, fake, _clock, log, _ = make(min_interval=0.0)  # a restart would be allowed at once
    await sup.step()
    fake.publish("set-2")
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, adds=1)]

    async def broken() -> int | None:
        raise OSError("disk full")

    fake.mark_running = broken  # type: ignore[method-assign]
    await sup.step()
    assert fake.restarts == ["set-1"] and sup.state.dhcpd_running_set == "set-2"
    assert "mark_running_failed" in log.names() and sup.wait() is None


async def test_no_live_update_while_dhcpd_is_down_after_it_ran() -> None:
    """dhcpd ran set-1, then neither set-2 nor the rollback to set-1 came up: dhcpd is down
    although a running set is known, so set-3 needs a start, not OMAPI."""
    sup, fake, clock, _log, _ = make(min_interval=0.0)
    await sup.step()
    fake.publish("set-2")
    fake.outcomes = [FAIL, FAIL]
    await sup.step()
    assert fake.restarts == ["set-1", "set-2", "set-1"] and fake.live_calls == 1
    assert sup.state.dhcpd_running_set and not sup.state.dhcpd_last_restart_ok
    fake.publish("set-3")
    fake.live_updates = [LiveUpdate(applied=True, attempted=True, adds=1)]
    clock.now = sup.not_before
    await sup.step()
    assert fake.live_calls == 1 and fake.restarts[-1] == "set-3"
