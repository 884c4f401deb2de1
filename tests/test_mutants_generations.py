"""Tests that kill mutants of provhad/generations.py which the other tests let live: the order
of the durable steps of a swap (spied on: a lost fsync shows only after a power loss), a swap
interrupted by a crash and recovered, the cleaning of leftovers, the rollback to the live set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provhad import generations
from provhad.generations import (
    CHECK_SUFFIX,
    JOURNAL,
    MANIFEST,
    STAGE_SUFFIX,
    Manifest,
    clean_leftovers,
    live_path,
    mark_running,
    recover,
    replace_file,
    rollback,
    stage,
    swap,
)
from provhad.plan import live_hashes, make_plan, stale_files
from provhad.render import DHCPD, RenderedFile, RenderedSet

Calls = list[tuple[str, str]]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Every fsync (by the path of its descriptor), rename (by target) and unlink, in order."""
    seen: Calls = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    def unlink(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
        seen.append(("unlink", os.fspath(path)))
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    yield seen


def test_replace_file_fsyncs_the_data_then_renames_then_fsyncs_the_directory(
    tmp_path: Path, calls: Calls
) -> None:
    target = tmp_path / "manifest.json"
    replace_file(target, b"{}")
    staged = tmp_path / f".manifest.json{STAGE_SUFFIX}"
    assert calls == [("fsync", str(staged)), ("replace", str(target)), ("fsync", str(tmp_path))]


def rendered_set(root: Path, version: str) -> RenderedSet:
    """Three dhcpd files, two in the dhcp directory and one in cmts_gws, all saying ``version``."""
    dhcp, cmts = root / "dhcp", root / "dhcp" / "cmts_gws"
    paths = [dhcp / "dhcpd.conf", dhcp / "modems-host.conf", cmts / "1.conf"]
    files = {
        str(p): RenderedFile(str(p), f"{p.name} {version}\n".encode(), 0o644, DHCPD, "t.j2")
        for p in paths
    }
    return RenderedSet(files, str(dhcp), str(cmts))


def publish(rendered: RenderedSet, state_dir: Path) -> Manifest:
    plan = make_plan(rendered, live_hashes(rendered), stale_files(rendered))
    return swap(stage(plan, rendered), state_dir)


def contents(rendered: RenderedSet) -> dict[str, bytes]:
    return {p: Path(p).read_bytes() for p in rendered.files}


def test_the_swap_fsyncs_each_directory_after_its_renames_and_before_the_manifest(
    tmp_path: Path, calls: Calls
) -> None:
    state_dir = tmp_path / "state"
    rendered = rendered_set(tmp_path, "v1")
    publish(rendered, state_dir)
    manifest = calls.index(("replace", str(state_dir / MANIFEST)))
    last_rename = max(
        i for i, c in enumerate(calls) if c[0] == "replace" and c[1] in rendered.files
    )
    between = calls[last_rename:manifest]
    for d in (rendered.dhcp_dir, rendered.cmts_dir):
        assert ("fsync", d) in between, d


def test_the_journal_is_dropped_only_after_the_manifest_is_written(
    tmp_path: Path, calls: Calls
) -> None:
    state_dir = tmp_path / "state"
    publish(rendered_set(tmp_path, "v1"), state_dir)
    assert calls.index(("replace", str(state_dir / MANIFEST))) < calls.index(
        ("unlink", str(state_dir / JOURNAL))
    )
    assert not (state_dir / JOURNAL).exists()


class Crash(BaseException):
    """The process dies here (nothing catches it, like a power loss)."""


def crash_after_renames(monkeypatch: pytest.MonkeyPatch, live: set[str], done: int) -> None:
    """os.replace dies when it is about to rename the (done+1)-th of the ``live`` paths."""
    real_replace: Callable[..., None] = os.replace
    count = 0

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal count
        if os.fspath(dst) in live:
            if count == done:
                raise Crash
            count += 1
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_recovery_rolls_back_when_a_staged_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    old = rendered_set(tmp_path, "v1")
    publish(old, state_dir)
    new = rendered_set(tmp_path, "v2")
    crash_after_renames(monkeypatch, set(new.files), done=1)
    with pytest.raises(Crash):
        publish(new, state_dir)
    monkeypatch.undo()
    assert (state_dir / JOURNAL).exists()
    # one file is renamed already; the staged copy of another is lost (the crash took it)
    journal = generations.Journal.load(state_dir)
    assert journal is not None
    present = [Path(p) for p in sorted(journal.renames.values()) if Path(p).exists()]
    assert len(present) == 2
    present[0].unlink()
    assert recover(state_dir) == "rolled back"
    assert contents(old) == {p: f.data for p, f in old.files.items()}
    manifest = Manifest.load(state_dir)
    assert manifest is not None and manifest.generation == 1


def test_recovery_rolls_forward_when_every_staged_file_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    publish(rendered_set(tmp_path, "v1"), state_dir)
    new = rendered_set(tmp_path, "v2")
    crash_after_renames(monkeypatch, set(new.files), done=1)
    with pytest.raises(Crash):
        publish(new, state_dir)
    monkeypatch.undo()
    assert recover(state_dir) == "rolled forward"
    assert contents(new) == {p: f.data for p, f in new.files.items()}
    manifest = Manifest.load(state_dir)
    assert manifest is not None and manifest.generation == 2


def test_leftover_staged_and_check_copies_are_cleaned(tmp_path: Path) -> None:
    names = [f".dhcpd.conf{STAGE_SUFFIX}", f".dhcpd.conf{CHECK_SUFFIX}", "dhcpd.conf", ".keep"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = clean_leftovers([str(tmp_path)])
    assert sorted(removed) == sorted(str(tmp_path / n) for n in names[:2])
    assert sorted(os.listdir(tmp_path)) == [".keep", "dhcpd.conf"]


@pytest.mark.parametrize("suffix", [STAGE_SUFFIX, CHECK_SUFFIX])
def test_live_path_of_a_staged_or_check_copy(suffix: str) -> None:
    assert live_path(f"/etc/dhcp-nmsprime/.dhcpd.conf{suffix}") == "/etc/dhcp-nmsprime/dhcpd.conf"
    assert live_path("/etc/dhcp-nmsprime/dhcpd.conf") == "/etc/dhcp-nmsprime/dhcpd.conf"


def test_a_rollback_to_the_set_already_live_changes_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    live = publish(rendered_set(tmp_path, "v1"), state_dir)
    assert mark_running(state_dir) == live
    assert rollback(state_dir) == live
    assert Manifest.load(state_dir) == live
    assert not (state_dir / JOURNAL).exists()
