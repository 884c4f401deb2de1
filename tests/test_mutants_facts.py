"""Tests that kill mutants of provhad/facts.py which the other tests let live."""

from __future__ import annotations

from pathlib import Path

from provhad import facts
from tests.test_cycle import cfg_for


def test_only_conf_files_are_read_for_network_access(tmp_path: Path) -> None:
    # the TFTP cm directory also holds the compiled .cfg files and backups an operator left
    cm = tmp_path / "tftpboot/cm"
    cm.mkdir(parents=True)
    (cm / "cm-1.conf").write_text("Main { NetworkAccess 1; }\n")
    for name in ("cm-2.cfg", "cm-3.conf.orig", "cm-4.conf~"):
        (cm / name).write_text("Main { NetworkAccess 1; }\n")
    cache: dict[str, tuple[facts.ConfStamp, bool]] = {}
    assert facts.network_access_hosts(cfg_for(tmp_path), cache) == {"cm-1"}
    assert set(cache) == {"cm-1.conf"}
