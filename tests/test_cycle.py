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
