"""Tests that kill mutants of provhad/plan.py which the other tests let live."""

from __future__ import annotations

from pathlib import Path

from provhad.generations import Manifest
from provhad.plan import Plan, live_counts, stale_files
from provhad.render import DHCPD, RenderedFile, RenderedSet


def test_a_plan_that_only_removes_a_cmts_file_is_dhcpds_work() -> None:
    plan = Plan(write=(), remove=("/etc/dhcp-nmsprime/cmts_gws/7.conf",), unchanged=())
    assert not plan.empty and plan.services() == {DHCPD}


def _rendered(dhcp_dir: Path, cmts: list[str]) -> RenderedSet:
    """A set holding only the cmts_gws files named (enough for stale_files and live_counts)."""
    cmts_dir = dhcp_dir / "cmts_gws"
    files = {
        str(cmts_dir / n): RenderedFile(str(cmts_dir / n), b"", 0o644, DHCPD, "cmts.j2")
        for n in cmts
    }
    return RenderedSet(files, str(dhcp_dir), str(cmts_dir))


def test_stale_files_are_only_the_cmts_files_no_longer_rendered(tmp_path: Path) -> None:
    cmts_dir = tmp_path / "cmts_gws"
    cmts_dir.mkdir()
    for name in ("1.conf", "2.conf", "3.conf", "notes.txt"):
        (cmts_dir / name).write_bytes(b"")
    assert stale_files(_rendered(tmp_path, ["1.conf", "3.conf"])) == [str(cmts_dir / "2.conf")]


def test_a_manifest_without_counts_falls_back_to_counting_the_live_files(tmp_path: Path) -> None:
    # a manifest written before counts were kept: the shrink guard must still see the hosts
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    Manifest(1, {}, "2024-01-01T00:00:00+00:00").store(state_dir)
    (tmp_path / "modems-host.conf").write_bytes(b"host cm-1 { }\nhost cm-2 { }\n# host no\n")
    (tmp_path / "cmts_gws").mkdir()
    (tmp_path / "cmts_gws" / "1.conf").write_bytes(b"subnet x {\n  pool\n  {\n  pool\n}\n")
    assert live_counts(state_dir, _rendered(tmp_path, [])) == {"hosts": 2, "pools": 2}


def test_a_manifest_with_counts_is_trusted(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    Manifest(1, {}, "2024-01-01T00:00:00+00:00", {"hosts": 7, "pools": 3}).store(state_dir)
    (tmp_path / "modems-host.conf").write_bytes(b"host cm-1 { }\n")
    assert live_counts(state_dir, _rendered(tmp_path, [])) == {"hosts": 7, "pools": 3}
