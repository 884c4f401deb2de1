"""What STATUS says and when the state file is written (provhad/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provhad.notify import Notifier
from provhad.report import PART_MAX, Reporter, status_line, summarise
from provhad.state import STATE_FILE, State


def test_summarise_keeps_a_text_of_exactly_the_limit() -> None:
    text = "x" * PART_MAX
    assert summarise(text) == text


def test_summarise_cuts_at_a_word_within_the_limit() -> None:
    text = "disk full; " + "word " * 30
    out = summarise(text, 20)
    assert len(out) <= 20 and out.endswith("...") and out == "disk full; word..."


def test_summarise_drops_punctuation_before_the_dots() -> None:
    assert summarise("aaaa, bbbb, cccc, dddd", 15) == "aaaa, bbbb..."


def good() -> State:
    return State(
        generation=3,
        counts={"modems": 2, "mtas": 1, "endpoints": 4},
        db_ok=True,
        db_node="db1:3306",
        last_cycle_ok=True,
        last_success_at="2026-06-01T12:34:56+00:00",
        dhcpd_applied_set="a",
        dhcpd_running_set="a",
    )


def test_status_of_a_healthy_daemon() -> None:
    assert status_line(good()) == (
        "live gen 3, ok 12:34:56, 7 hosts, 0 rejected, db db1:3306 ok, mqtt off"
    )


def test_status_of_a_database_outage_does_not_repeat_the_failed_cycle() -> None:
    s = good()
    s.db_ok, s.db_error, s.last_cycle_ok, s.last_error = False, "no node", False, "no node"
    line = status_line(s)
    assert "db DOWN (no node)" in line and "FAILED" not in line


def test_status_of_dhcpd_failed_pending_and_held() -> None:
    s = good()
    s.dhcpd_applied_set = "b"
    assert status_line(s).endswith(", dhcpd restart pending")
    s.dhcpd_last_restart_ok, s.dhcpd_error = False, "exit 1"
    assert status_line(s).endswith(", dhcpd restart FAILED (exit 1)")
    s = good()
    s.held_reason = "shrink guard: hosts would drop from 100 to 0"
    assert status_line(s).endswith(", HELD: shrink guard: hosts would drop from 100 to 0")


class Link:
    def __init__(self, connected: bool) -> None:
        self.connected, self.last_error = connected, "connection refused"
        self.sent: list[dict[str, Any]] = []

    def publish_status(self, body: dict[str, Any]) -> None:
        self.sent.append(body)


def test_report_writes_the_state_file_and_tells_mqtts_state(tmp_path: Path) -> None:
    state = good()
    state.node = "slave1"
    reporter = Reporter(state, tmp_path, Notifier(), "slave1")
    link = Link(connected=False)
    reporter.mqtt = link
    reporter.report()
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["status"] == reporter.state.status and saved["mqtt"].startswith("down (")
    link.connected = True
    reporter.report()
    assert link.sent[-1]["mqtt"] == "ok" and link.sent[-1]["node"] == "slave1"


def test_summarise_with_its_dots_stays_within_the_limit() -> None:
    assert summarise("aaaa bbbb cccc dddd eeee", 20) == "aaaa bbbb cccc..."


def test_status_of_the_configfile_hook() -> None:
    s = good()
    s.hook_ok = True
    assert "configfile" not in status_line(s)
    s.hook_ok, s.hook_error = False, "exit 1: " + "php artisan failed " * 10
    line = status_line(s)
    assert line.endswith(f", configfile build FAILED ({summarise(s.hook_error)})")
    assert len(line) < len(status_line(good())) + 40 + PART_MAX


def test_status_of_a_first_start_and_of_generation_zero() -> None:
    assert status_line(State()).startswith("no live set, 0 hosts, 0 rejected, db DOWN")
    s = good()
    s.generation = 0
    assert status_line(s).startswith("live gen 0, ")


def test_status_counts_rejects_and_every_kind_of_host() -> None:
    s = good()
    s.counts, s.rejected = {"modems": 1, "mtas": 10, "endpoints": 100}, ["modem 1: bad", "x"]
    assert ", 111 hosts, 2 rejected, " in status_line(s)


def test_status_of_a_database_outage_is_summarised() -> None:
    s = good()
    s.db_ok, s.db_error = False, "db1:3306: error 2003: Can't connect " * 5
    assert f"db DOWN ({summarise(s.db_error)})" in status_line(s)


def test_a_failed_restart_hides_the_pending_one() -> None:
    s = good()
    s.dhcpd_applied_set, s.dhcpd_last_restart_ok, s.dhcpd_error = "b", False, "exit 1"
    assert s.restart_pending and "pending" not in status_line(s)


def test_status_says_when_omapi_is_off_or_the_last_update_fell_back() -> None:
    s = good()
    s.omapi = "on"
    assert "omapi" not in status_line(s)  # on and working: nothing to say
    s.omapi = "off (no OMAPI key in failover.conf)"
    assert status_line(s).endswith(", omapi off (no OMAPI key in failover.conf)")
    s.omapi = "on"
    s.omapi_last = "2026-03-29T00:58:00+00:00 -1 +2"
    s.omapi_fallback = "2026-03-29T00:59:30+00:00 OMAPI: in doubt (no answer)"
    assert status_line(s).endswith(", omapi fell back (OMAPI: in doubt (no answer))")
    s.omapi_last = "2026-03-29T01:00:00+00:00 -0 +1"
    assert "omapi" not in status_line(s)
