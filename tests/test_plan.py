"""The shrink policy: the pure guard and confirmation check (tables), and the hold/confirm flow
through cycle.apply and `provhad confirm-shrink` on real files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from provhad import cli, cycle, plan
from provhad.plan import Confirmation, ShrinkLimits, confirmation_problem, judge_shrink
from tests import rows
from tests.test_cycle import FACTS, cfg_for, tree

DEFAULTS = ShrinkLimits()  # 10 %, 50 hosts, 2 pools: the operator's defaults


@pytest.mark.parametrize(
    ("live", "new", "limits", "hold", "note"),
    [
        # the examples
        ({"hosts": 8}, {"hosts": 7}, DEFAULTS, "", ""),  # one deleted modem of eight (-12 %)
        ({"pools": 4}, {"pools": 3}, DEFAULTS, "", ""),  # one pool of four (-25 %)
        ({"hosts": 500_000}, {"hosts": 450_001}, DEFAULTS, "", "hosts drop from 500000"),
        # held only when both the share and the absolute number are exceeded
        ({"hosts": 500_000}, {"hosts": 449_999}, DEFAULTS, "from 500000 to 449999 (-10%", ""),
        ({"hosts": 100}, {"hosts": 50}, DEFAULTS, "", ""),  # exactly 50: not more than 50
        ({"hosts": 100}, {"hosts": 49}, DEFAULTS, "hosts would drop from 100 to 49", ""),
        ({"hosts": 100_000}, {"hosts": 0}, DEFAULTS, "from 100000 to 0 (-100%", ""),
        ({"pools": 4}, {"pools": 1}, DEFAULTS, "pools would drop from 4 to 1 (-75%", ""),
        ({"pools": 40}, {"pools": 37}, DEFAULTS, "", "pools drop from 40 to 37"),
        ({"hosts": 10, "pools": 4}, {"hosts": 20, "pools": 9}, DEFAULTS, "", ""),  # growth
        ({}, {"hosts": 5}, DEFAULTS, "", ""),  # nothing live yet
        # the knobs: 100 % turns the guard off, 0/0 holds any drop
        ({"hosts": 1000}, {"hosts": 0}, ShrinkLimits(100, 50, 2), "", "hosts drop"),
        ({"hosts": 8}, {"hosts": 7}, ShrinkLimits(0, 0, 0), "from 8 to 7 (-12%", ""),
        ({"hosts": 8}, {"hosts": 7}, ShrinkLimits(10, 0, 0), "more than 10% and more than 0", ""),
    ],
)
def test_judge_shrink(
    live: dict[str, int], new: dict[str, int], limits: ShrinkLimits, hold: str, note: str
) -> None:
    verdict = judge_shrink(live, new, limits)
    if hold:
        assert verdict.hold.startswith("shrink guard: ") and hold in verdict.hold, verdict
    else:
        assert verdict.hold == "", verdict
    if note:
        assert len(verdict.notes) == 1 and note in verdict.notes[0], verdict
    else:
        assert verdict.notes == (), verdict


def test_both_kinds_are_reported() -> None:
    verdict = judge_shrink({"hosts": 1000, "pools": 10}, {"hosts": 0, "pools": 0}, DEFAULTS)
    assert "hosts would drop" in verdict.hold and "pools would drop" in verdict.hold


T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("confirmed", "expires", "now", "problem"),
    [
        ("a" * 64, T0 + dt.timedelta(hours=1), T0, None),
        ("a" * 64, T0 + dt.timedelta(hours=1), T0 + dt.timedelta(minutes=59), None),
        ("a" * 64, T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=1), "expired at"),
        ("a" * 64, T0, T0 + dt.timedelta(days=3), "expired at 2026-03-01T12:00:00+00:00"),
        ("b" * 64, T0 + dt.timedelta(hours=1), T0, "for another set (bbbbbbbbbbbb"),
    ],
)
def test_confirmation_problem(
    confirmed: str, expires: dt.datetime, now: dt.datetime, problem: str | None
) -> None:
    found = confirmation_problem(Confirmation(confirmed, expires), "a" * 64, now)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


# --- the flow on real files ---------------------------------------------------------------------


def confirm_shrink(root: Path, *extra: str) -> int:
    conf = root.parent / "provhad.toml"
    conf.write_text('[database]\nhosts = ["127.0.0.1:1"]\n[provha]\nown_state = "slave"\n')
    return cli.main(["confirm-shrink", "--config", str(conf), "--root", str(root), *extra])


def test_held_set_is_released_by_its_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    state = root / "var/lib/provhad"
    cfg = cfg_for(root, max_shrink_percent=10, max_shrink_hosts=0)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(root)
    snap = rows.small()
    smaller = dataclasses.replace(snap, modem=snap.modem[:1], endpoint=[])
    held = cycle.apply(cfg, smaller, FACTS)
    assert not held.ok and held.shrink_held
    assert "hosts would drop from 6 to 2 (-67%, more than 10% and more than 0)" in held.error
    assert "provhad confirm-shrink" in held.error
    assert tree(root) == before
    record = json.loads((state / plan.SHRINK_HELD).read_text())
    assert record["set"] == held.set_hash and record["counts"]["new"]["hosts"] == 2
    assert record["reason"].startswith("shrink guard: hosts would drop")

    assert confirm_shrink(root) == 0
    out = capsys.readouterr().out
    assert f"confirmed set {held.set_hash[:12]}" in out
    confirmation = json.loads((state / plan.CONFIRM_SHRINK).read_text())
    assert confirmation["set"] == held.set_hash
    res = cycle.apply(cfg, smaller, FACTS)
    assert res.ok and res.generation == 2 and "published as confirmed" in res.warnings[-1]
    assert not (state / plan.CONFIRM_SHRINK).exists()  # one shot
    assert not (state / plan.SHRINK_HELD).exists()


def test_expired_or_foreign_confirmation_is_ignored_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    state = root / "var/lib/provhad"
    cfg = cfg_for(root, max_shrink_percent=10, max_shrink_hosts=0)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(root)
    snap = rows.small()
    smaller = dataclasses.replace(snap, modem=snap.modem[:1], endpoint=[])
    assert cycle.apply(cfg, smaller, FACTS).shrink_held
    assert confirm_shrink(root, "--ttl", "60") == 0
    # two hours later the confirmation has expired: held again, said so, confirmation gone
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    res = cycle.apply(cfg, smaller, FACTS, now=lambda: later)
    assert res.shrink_held and not res.ok
    assert any("expired at" in w for w in res.warnings), res.warnings
    assert not (state / plan.CONFIRM_SHRINK).exists()
    assert tree(root) == before
    # confirmed, then the data changed again: the confirmation does not cover the new set
    assert confirm_shrink(root) == 0
    even_smaller = dataclasses.replace(smaller, mta=[])
    res = cycle.apply(cfg, even_smaller, FACTS)
    assert res.shrink_held and any("for another set" in w for w in res.warnings), res.warnings
    assert tree(root) == before
    assert json.loads((state / plan.SHRINK_HELD).read_text())["set"] == res.set_hash
    # an old-style confirmation (plain text) is not a confirmation of anything
    (state / plan.CONFIRM_SHRINK).write_text("confirmed by a person\n")
    res = cycle.apply(cfg, even_smaller, FACTS)
    assert res.shrink_held and any("unreadable shrink confirmation" in w for w in res.warnings)
    capsys.readouterr()


def test_confirm_shrink_with_nothing_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert confirm_shrink(root) == 1
    err = capsys.readouterr().err
    assert "the shrink guard holds nothing back" in err and "shrink-held.json" in err
    assert not (root / "var/lib/provhad" / plan.CONFIRM_SHRINK).exists()


def test_a_published_set_clears_the_hold(tmp_path: Path) -> None:
    """A hold that the data made moot (the rows came back) is not left for a confirmation."""
    root = tmp_path / "root"
    cfg = cfg_for(root, max_shrink_percent=10, max_shrink_hosts=0)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    assert cycle.apply(cfg, dataclasses.replace(snap, modem=snap.modem[:1]), FACTS).shrink_held
    assert (root / "var/lib/provhad" / plan.SHRINK_HELD).exists()
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    assert not (root / "var/lib/provhad" / plan.SHRINK_HELD).exists()


def test_shrink_guard_counts_a_foreign_live_set(tmp_path: Path) -> None:
    """Before provhad's first publish, the live set (e.g. upstream's) is counted from its files."""
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    (dhcp / "cmts_gws").mkdir(parents=True)
    (dhcp / "modems-host.conf").write_text("".join(f"host cm-{i} {{ }}\n" for i in range(100)))
    res = cycle.apply(cfg_for(tmp_path, max_shrink_percent=10), rows.small(), FACTS)
    assert res.shrink_held and "from 100 to 6" in res.error


def test_the_defaults_let_a_small_network_shrink(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, max_shrink_percent=10)  # 50 hosts, 2 pools: the defaults
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    res = cycle.apply(cfg, dataclasses.replace(snap, modem=snap.modem[:1], endpoint=[]), FACTS)
    assert res.ok and res.generation == 2
    assert not any("shrink" in w for w in res.warnings), res.warnings
