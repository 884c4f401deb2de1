"""Tests that kill mutants of provhad/check.py which the other tests let live."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from provhad import check
from provhad.config import CheckConfig
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
