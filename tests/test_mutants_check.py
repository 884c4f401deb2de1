"""Tests that kill mutants of provhad/check.py which the other tests let live."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from provhad import check
from provhad.config import CheckConfig, Config
from provhad.services import UnitState
from provhad.state import State

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def healthy(**kw: object) -> State:
    s = State(pid=1, status="ok", db_ok=True, db_node="db1:3306", last_cycle_ok=True)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_a_last_success_exactly_age_critical_ago_is_critical() -> None:
    limits = CheckConfig()
    at = (NOW - dt.timedelta(seconds=limits.age_critical)).isoformat()
    assert check.evaluate(healthy(last_success_at=at), limits, NOW).code == check.CRITICAL


def test_a_daemon_that_never_started_nor_succeeded_is_critical() -> None:
    verdict = check.evaluate(healthy(), CheckConfig(), NOW)
    assert verdict.code == check.CRITICAL and "no successful cycle" in verdict.text


def test_a_failed_cycle_during_an_outage_is_said_once_as_the_outage() -> None:
    s = healthy(last_success_at=NOW.isoformat(), db_ok=False, db_error="no node")
    s.last_cycle_ok, s.last_error = False, "no node"
    verdict = check.evaluate(s, CheckConfig(), NOW)
    assert "database DOWN: no node" in verdict.text and "last cycle failed" not in verdict.text


def test_no_pid_is_not_running() -> None:
    assert check.not_running(healthy(pid=0)) == "no pid in the state file"


def test_another_users_process_is_judged_by_its_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert check.not_running(healthy(pid=1)) == "pid 1 is not provhad"


# --- the units provhad feeds, inspect and status_code ------------------------------------------


def _dhcpd(active_for: float) -> check.Units:
    return check.Units(UnitState("dhcpd.service", "loaded", "active", "running", active_for))


def _restarted(took: float, ok: bool = True) -> State:
    at = (NOW - dt.timedelta(seconds=100)).isoformat()
    return healthy(
        last_success_at=NOW.isoformat(),
        generation=7,
        dhcpd_last_restart_at=at,
        dhcpd_restart_s=took,
        dhcpd_last_restart_ok=ok,
    )


def test_dhcpd_that_came_up_during_a_slow_restart_runs_the_live_set() -> None:
    # restarted 100 s ago, taking 30 s: dhcpd up for 125 s came up within that restart
    verdict = check.evaluate(_restarted(30.0), CheckConfig(), NOW, units=_dhcpd(125.0))
    assert verdict.code == check.OK, verdict.text
    verdict = check.evaluate(_restarted(30.0), CheckConfig(), NOW, units=_dhcpd(140.0))
    assert verdict.code == check.WARNING and "may not run live gen 7" in verdict.text


def test_dhcpd_up_before_a_failed_restart_is_that_failure_not_a_stale_set() -> None:
    state = _restarted(3.0, ok=False)
    state.dhcpd_error = "exit 1"
    verdict = check.evaluate(state, CheckConfig(), NOW, units=_dhcpd(3600.0))
    assert "dhcpd restart FAILED" in verdict.text and "may not run" not in verdict.text


def test_dhcpd_named_among_the_other_units_is_asked_once() -> None:
    cfg = Config(check=CheckConfig(units=("dhcpd.service", "auto")))
    assert check.watched_units(cfg) == ("dhcpd.service", ("named.service", "chrony.service"))


def test_an_unreadable_state_file_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(state_dir: object) -> State:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(check, "load_state", denied)
    report = check.inspect(Config(), NOW)
    assert report.verdict.code == check.UNKNOWN and report.state is None
    assert "permission denied (add this user to group provhad)" in report.verdict.text
    assert check.status_code(report) == check.STATUS_UNKNOWN
