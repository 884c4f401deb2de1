"""The cycle's helpers, and what the other publish tests share (config, file trees, dhcpd -t)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from provhad import config, cycle
from provhad.render import HostFacts, builtin_templates

FACTS = HostFacts(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "nmsslave.nmsprime.test", None)


def cfg_for(
    root: Path, role: str = "slave", max_shrink_percent: float = 100, max_shrink_hosts: int = 50
) -> config.Config:
    """The tests' config; the shrink guard is off unless a test is about it (the small
    network shrinks by more than 10 % with any deleted row)."""
    cfg = config.Config(own_state=role).with_root(root)
    safety = config.SafetyConfig(max_shrink_percent, max_shrink_hosts)
    return dataclasses.replace(cfg, safety=safety)


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (the manifest and state excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "var/lib/provhad" not in str(p)
    }


def dhcpd_accepts(root: Path) -> bool:
    conf = root / "etc/dhcp-nmsprime/dhcpd.conf"
    proc = subprocess.run(["dhcpd", "-t", "-q", "-cf", str(conf)], capture_output=True, check=False)
    return proc.returncode == 0


def test_quiet_gc_restores_the_collector() -> None:
    import gc

    assert gc.isenabled()
    with cycle.quiet_gc():
        assert not gc.isenabled()
        with cycle.quiet_gc():  # nested: the inner one must not switch it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cycle.quiet_gc():
        raise RuntimeError("a failed rebuild")
    assert gc.isenabled()


def test_laps_add_up_per_step() -> None:
    ticks = iter([10.0, 10.5, 12.0, 12.25])
    spent: dict[str, float] = {}
    lap = cycle.Laps(spent, clock=lambda: next(ticks))
    lap("model")
    lap("validate")
    lap("model")  # a second attempt adds to the first
    assert spent == {"model": 0.75, "validate": 1.5}


def test_a_host_only_change_is_validated_by_its_changed_hosts(tmp_path: Path) -> None:
    """Issue 12: a change confined to the host files is proven by dhcpd -t over the changed
    hosts on a stub (O(change)); anything else of dhcpd's by dhcpd -t over the whole set."""
    from provhad.validate import run_dhcpd_t
    from tests import rows

    cfg = cfg_for(tmp_path)
    snap = rows.small()
    first = cycle.apply(cfg, snap, FACTS)
    assert first.ok and not first.hosts_only and "dhcpd -t" in first.validated
    assert not first.unproven
    modems = [*snap.modem, rows.modem(100777, "00:11:22:33:47:77")]
    added = cycle.apply(cfg, dataclasses.replace(snap, modem=modems), FACTS)
    assert added.ok and added.hosts_only and added.unproven, added.validated
    assert added.validated[0] == cycle.HOSTS_ONLY and "dhcpd -t" not in added.validated
    # where the time went, step by step (the journal's phases_ms)
    assert list(added.phases) == ["model", "render", "plan", "stage", "validate", "swap"]
    assert all(v >= 0 for v in added.phases.values())
    same = cycle.apply(cfg, dataclasses.replace(snap, modem=modems), FACTS)
    assert same.ok and not same.changed and list(same.phases) == ["model", "render", "plan"]
    assert "cm-100777" in (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_text()
    conf = str(tmp_path / "etc/dhcp-nmsprime/dhcpd.conf")
    assert run_dhcpd_t(conf, cfg.validate) == (0, "")  # the whole set holds too
    # a modem blocked (a subclass member, no statements) and its line changed: still O(change)
    blocked = [dict(m) | {"internet_access": 0} if m["id"] == 100777 else m for m in modems]
    member = cycle.apply(cfg, dataclasses.replace(snap, modem=blocked), FACTS)
    assert member.ok and member.hosts_only and member.unproven, member.validated
    assert "00:11:22:33:47:77" in (tmp_path / "etc/dhcp-nmsprime/blocked.conf").read_text()
    assert run_dhcpd_t(conf, cfg.validate) == (0, "")
    # global.conf (beside the host files: the time offset changes with DST) is checked whole
    summer = dataclasses.replace(FACTS, now=dt.datetime(2026, 7, 15, tzinfo=dt.UTC))
    offset = cycle.apply(cfg, dataclasses.replace(snap, modem=blocked), summer)
    assert offset.ok and offset.written == [str(tmp_path / "etc/dhcp-nmsprime/global.conf")]
    assert not offset.hosts_only and "dhcpd -t" in offset.validated
    pools = [dict(p) | {"dns1_ip": "10.9.9.9"} for p in snap.ippool]
    pool = cycle.apply(cfg, dataclasses.replace(snap, modem=blocked, ippool=pools), summer)
    assert pool.ok and not pool.hosts_only and "dhcpd -t" in pool.validated


def test_a_member_of_a_class_global_conf_does_not_declare_is_checked_whole(
    tmp_path: Path,
) -> None:
    """An operator's blocked.conf template naming another class: the quick check cannot vouch
    for it; the full check's dhcpd -t refuses those lines and their modems are left out."""
    from tests import rows

    cfg = cfg_for(tmp_path)
    snap = rows.small()
    assert cycle.apply(cfg, snap, FACTS).ok
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    text = (builtin_templates() / "blocked.conf.j2").read_text()
    (over / "blocked.conf.j2").write_text(text.replace('"blocked"', '"no-such-class"'))
    blocked = [dict(m) | {"internet_access": 0} for m in snap.modem]
    result = cycle.apply(cfg, dataclasses.replace(snap, modem=blocked), FACTS)
    assert result.ok and result.rejected_by_dhcpd, result.validated
    assert {r.table for r in result.rejected_by_dhcpd} == {"modem"}
    assert "no-such-class" not in (tmp_path / "etc/dhcp-nmsprime/blocked.conf").read_text()


def _lines(data: bytes) -> Counter[bytes]:
    return Counter(data.split(b"\n"))


def test_a_bad_host_in_a_host_only_change_is_left_out_by_the_full_check_in_pieces(
    tmp_path: Path,
) -> None:
    """The changed host fails on its own; the full check (in pieces, as at 500k) names its
    row, which is left out; the rest of the change is proven on its own and goes live."""
    from provhad import validate
    from provhad.render import builtin_templates
    from tests import rows

    snap = rows.small()
    modems = [*snap.modem, *(rows.modem(300_000 + i, f"00:11:22:55:00:{i:02x}") for i in range(30))]
    pieces = validate.Pieces(from_hosts=10, hosts=4)
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, dataclasses.replace(snap, modem=modems), FACTS, pieces=pieces).ok
    text = (builtin_templates() / "modems-host.conf.j2").read_text()
    old = 'ddns-hostname "{{ m.hostname }}";'
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "modems-host.conf.j2").write_text(
        text.replace(old, old + "{% if m.id == 300015 %} no-such-statement 1;{% endif %}")
    )
    changed = [dict(r) for r in modems]
    changed[-15]["hostname"] = "cm-renamed"  # 300015: renamed and now rendered badly
    changed[-3]["hostname"] = "cm-also-renamed"
    res = cycle.apply(cfg, dataclasses.replace(snap, modem=changed), FACTS, pieces=pieces)
    assert res.ok, res.problems
    [reject] = res.rejected_by_dhcpd  # named by the full check: check_hosts names no row
    assert (reject.table, reject.id) == ("modem", 300_015)
    assert reject.reason.startswith("rejected by dhcpd: "), reject
    assert res.hosts_only  # what is left of the change then passed on its own
    hosts = (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_text()
    assert "cm-also-renamed" in hosts and "cm-renamed " not in hosts and "cm-300015 " not in hosts
    assert dhcpd_accepts(tmp_path)
