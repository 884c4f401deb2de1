"""The cycle's helpers, and what the other publish tests share (config, file trees, dhcpd -t)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path

import pytest

from provhad import config, cycle
from provhad.render import HostFacts

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


def test_a_host_only_change_is_validated_by_its_changed_hosts(tmp_path: Path) -> None:
    """Issue 12: a change confined to the host files is proven by dhcpd -t over the changed
    hosts on a stub (O(change)); anything else of dhcpd's by dhcpd -t over the whole set."""
    from provhad.validate import run_dhcpd_t
    from tests import rows

    cfg = cfg_for(tmp_path)
    snap = rows.small()
    first = cycle.apply(cfg, snap, FACTS)
    assert first.ok and not first.hosts_only and "dhcpd -t" in first.validated
    modems = [*snap.modem, rows.modem(100777, "00:11:22:33:47:77")]
    added = cycle.apply(cfg, dataclasses.replace(snap, modem=modems), FACTS)
    assert added.ok and added.hosts_only, added.validated
    assert added.validated[0] == cycle.HOSTS_ONLY and "dhcpd -t" not in added.validated
    assert "cm-100777" in (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_text()
    conf = str(tmp_path / "etc/dhcp-nmsprime/dhcpd.conf")
    assert run_dhcpd_t(conf, cfg.validate) == (0, "")  # the whole set holds too
    pools = [dict(p) | {"dns1_ip": "10.9.9.9"} for p in snap.ippool]
    pool = cycle.apply(cfg, dataclasses.replace(snap, modem=modems, ippool=pools), FACTS)
    assert pool.ok and not pool.hosts_only and "dhcpd -t" in pool.validated
