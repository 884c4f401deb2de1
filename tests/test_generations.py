"""The generation store on real files: stage, swap, manifest, leftovers, the running set and the
rollback to it, the writer lock."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from provhad import cycle, generations
from tests import rows
from tests.test_cycle import FACTS, cfg_for, dhcpd_accepts, tree


@pytest.mark.parametrize("role", ["slave", "master"])
def test_publish_whole_set_accepted_by_dhcpd(tmp_path: Path, role: str) -> None:
    res = cycle.apply(cfg_for(tmp_path, role), rows.small(), FACTS)
    assert res.ok, res.problems
    assert res.generation == 1 and len(res.written) == 17
    assert set(res.validated) == {"dhcpd -t", "named-checkconf", "chronyd -p", "sh -n"}
    assert dhcpd_accepts(tmp_path)
    assert not list(tmp_path.rglob(".*provhad-*"))  # no staged or check copies left
    manifest = generations.Manifest.load(tmp_path / "var/lib/provhad")
    assert manifest is not None and manifest.generation == 1
    for path, digest in manifest.files.items():
        assert generations.sha256(Path(path).read_bytes()) == digest
    secret_files = [
        "etc/dhcp-nmsprime/dhcpd.conf",
        "etc/dhcp-nmsprime/failover.conf",
        "etc/named-nmsprime.d/dhcpupdate.key",
        "etc/dhcp-nmsprime/named-ddns.sh",
    ]
    for rel in secret_files:
        assert (tmp_path / rel).stat().st_mode & 0o007 == 0, rel


def test_no_change_writes_nothing(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = cycle.apply(cfg, rows.small(), FACTS)
    assert again.ok and not again.changed and again.generation == 1
    assert again.services == set()
    assert again.validated == []  # nothing to publish: the validators are not even run
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_only_changed_files_are_written(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    changed = dataclasses.replace(
        snap, modem=[*snap.modem, rows.modem(100020, "00:11:22:33:44:20")]
    )
    res = cycle.apply(cfg, changed, FACTS)
    assert res.ok and res.generation == 2
    assert res.written == [str(tmp_path / "etc/dhcp-nmsprime/modems-host.conf")]
    assert res.services == {"dhcpd"}
    assert b"host cm-100020 " in (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_bytes()


def test_deleted_cmts_file_is_removed(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    gone = dataclasses.replace(snap, netgw=snap.netgw[:1])
    res = cycle.apply(cfg, gone, FACTS)
    assert res.ok and res.removed == [str(tmp_path / "etc/dhcp-nmsprime/cmts_gws/2.conf")]
    assert not (tmp_path / "etc/dhcp-nmsprime/cmts_gws/2.conf").exists()
    assert dhcpd_accepts(tmp_path)


def test_staging_failure_is_clear_and_harmless(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(tmp_path)
    cmts = tmp_path / "etc/dhcp-nmsprime/cmts_gws"
    for f in cmts.iterdir():
        f.unlink()
    cmts.rmdir()
    cmts.write_text("a file where a directory should be\n")  # makes the staging fail
    snap = rows.small()
    more = [*snap.modem, rows.modem(100030, "00:11:22:33:44:30")]
    with pytest.raises(generations.PublishError, match="staging failed"):
        cycle.apply(cfg, dataclasses.replace(snap, modem=more), FACTS)
    after = tree(tmp_path)
    for rel in before:
        if "cmts_gws/" not in rel:
            assert after[rel] == before[rel], rel
    assert not list(tmp_path.rglob(".*provhad-*"))


def test_leftovers_of_a_crash_are_cleaned(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    dhcp.mkdir(parents=True)
    (dhcp / ".modems-host.conf.provhad-new").write_text("half")
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    assert not (dhcp / ".modems-host.conf.provhad-new").exists()
    assert os.listdir(dhcp).count("modems-host.conf") == 1
