"""Tests that kill mutants of provhad/generations.py which the other tests let live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provhad.generations import STAGE_SUFFIX, replace_file


def test_replace_file_fsyncs_the_data_then_renames_then_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a lost fsync shows only after a power loss; the order of the calls is what can be seen
    target = tmp_path / "manifest.json"
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    replace_file(target, b"{}")
    staged = tmp_path / f".manifest.json{STAGE_SUFFIX}"
    assert calls == [("fsync", str(staged)), ("replace", str(target)), ("fsync", str(tmp_path))]
