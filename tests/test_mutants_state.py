"""The state file's durability and parsing, and the digest of dhcpd's files (provhad/state.py).

A lost fsync cannot be seen without cutting the power, so the test spies on os.fsync: the
file's data is fsynced before it is renamed over the old one, and its directory after."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provhad.state import STATE_FILE, DhcpdFiles, State


def test_the_state_file_is_fsynced_then_renamed_then_its_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / STATE_FILE
    target.write_bytes(b"old")
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    State(pid=7).save(tmp_path)
    tmp = tmp_path / f".{STATE_FILE}.provhad-new"
    assert calls == [
        ("fsync", str(tmp)),
        ("replace", f"{tmp} -> {target}"),
        ("fsync", str(tmp_path)),
    ]
    assert json.loads(target.read_text())["pid"] == 7 and not tmp.exists()


def test_the_state_file_tells_whether_a_restart_is_pending(tmp_path: Path) -> None:
    State(dhcpd_applied_set="a", dhcpd_running_set="b").save(tmp_path)
    assert json.loads((tmp_path / STATE_FILE).read_text())["restart_pending"] is True
    State(dhcpd_applied_set="a", dhcpd_running_set="a").save(tmp_path)
    assert json.loads((tmp_path / STATE_FILE).read_text())["restart_pending"] is False


def test_a_newer_state_file_with_unknown_keys_loads(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": 7, "from_the_future": 1}))
    assert State.load(tmp_path).pid == 7


@pytest.mark.parametrize("text", ["[1, 2]", "{", "null"])
def test_a_garbled_state_file_loads_as_a_fresh_state(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    assert State.load(tmp_path) == State()


def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dhcp"
    (d / "cmts_gws").mkdir(parents=True)
    (d / "dhcpd.conf").write_text("include x;\n")
    (d / "cmts_gws" / "1.conf").write_text("subnet\n")
    return d


def test_digest_is_empty_without_files(tmp_path: Path) -> None:
    assert DhcpdFiles(tmp_path).digest() == ""


def test_digest_ignores_hidden_files_and_directories(tmp_path: Path) -> None:
    d = conf_dir(tmp_path)
    files = DhcpdFiles(d)
    before = files.digest()
    (d / ".dhcpd.conf.swp.conf").write_text("junk")
    (d / ".old").mkdir()
    (d / ".old" / "dhcpd.conf").write_text("junk")
    (d / "notes.txt").write_text("junk")
    assert files.digest() == before


def test_digest_follows_a_replaced_file_and_a_renamed_one(tmp_path: Path) -> None:
    d = conf_dir(tmp_path)
    files = DhcpdFiles(d)
    first = files.digest()
    new = d / ".dhcpd.conf.provhad-new"
    new.write_text("include y;\n")
    os.replace(new, d / "dhcpd.conf")
    second = files.digest()
    assert second != first
    os.rename(d / "cmts_gws" / "1.conf", d / "cmts_gws" / "2.conf")
    assert files.digest() != second


def test_a_file_the_cycle_wrote_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor shares the plan's digests: a 67 MB modems-host.conf just written and
    remembered is not hashed a second time; a file changed behind provhad's back still is."""
    from provhad import generations, plan

    d = conf_dir(tmp_path)
    shared = plan.FileDigests()
    files = DhcpdFiles(d, digests=shared)
    conf = d / "dhcpd.conf"
    new = d / ".dhcpd.conf.provhad-new"
    new.write_text("include z;\n")
    os.replace(new, conf)
    shared.remember(str(conf), "0" * 64)  # what the cycle says it wrote
    read: list[str] = []
    real = generations.file_sha256

    def hashed(path: str) -> str:
        read.append(path)
        return real(path)

    monkeypatch.setattr(plan, "file_sha256", hashed)
    files.digest()
    assert files.hashes["dhcpd.conf"] == "0" * 64 and str(conf) not in read
    conf.write_text("include w;\n")  # an operator's edit: new ctime, read again
    files.digest()
    assert str(conf) in read and files.hashes["dhcpd.conf"] != "0" * 64
