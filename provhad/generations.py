"""The generation store: staged files, the manifest, the swap journal, recovery, the set dhcpd
last came up with ("running") and the rollback to it, and the lock that keeps one writer.

Staged files are hidden siblings of their live paths (``.NAME.provhad-new``) so the swap is a
rename on the same file system. A swap keeps what it replaces in ``previous/`` only until it is
complete: a crash before that is undone from there by :func:`recover`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from provhad.render import INCLUDERS, RenderedSet

if TYPE_CHECKING:
    from provhad.plan import Plan

STAGE_SUFFIX = ".provhad-new"
CHECK_SUFFIX = ".provhad-check"
MANIFEST = "manifest.json"
#: what the current swap replaces, kept until the swap is complete (for recover())
PREVIOUS = "previous"
#: The swap's intent, written (fsynced) before its first rename and removed after the manifest.
JOURNAL = "swap-journal.json"
#: symlink to the directory holding the set dhcpd last came up with
RUNNING = "running"
WRITER_LOCK = "writer.lock"
CMTS_FILE = re.compile(r"^\d+\.conf$")


class PublishError(Exception):
    """Staging, swapping or rolling back failed (disk full, read-only file system ...); the
    message names the operation and the path."""

    @classmethod
    def of(cls, operation: str, exc: OSError) -> PublishError:
        """``operation failed: <reason> (<path>)`` from an OSError."""
        where = f" ({exc.filename})" if exc.filename is not None else ""
        return cls(f"{operation} failed: {exc.strerror or exc}{where}")


def _named(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` with ``path`` as its file name (os.write and os.fsync name none)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


# --- durable file operations: one helper each ----------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's content, read in pieces (a live modems-host.conf can be 80 MB)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sibling(path: str, suffix: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}{suffix}")


def live_path(path: str) -> str:
    """The live path behind a staged or check copy's path (dhcpd names those in errors)."""
    head, name = os.path.split(path)
    for suffix in (STAGE_SUFFIX, CHECK_SUFFIX):
        if name.startswith(".") and name.endswith(suffix):
            return os.path.join(head, name[1 : -len(suffix)])
    return path


def write_file(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Create or truncate ``path``, write ``data`` with ``mode`` and fsync it. The OSError
    raised names ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _named(exc, path) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except OSError as exc:
        raise _named(exc, path) from exc
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _named(exc, path) from exc


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` atomically: a hidden sibling, fsynced, renamed over it, directory fsynced.
    A crash leaves the old or the new content; a failure removes the sibling."""
    tmp = Path(sibling(str(path), STAGE_SUFFIX))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp, data, mode)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def copy_durably(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy ``src`` (content and mode) to ``dst`` and fsync it."""
    try:
        shutil.copy2(src, dst)
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _named(exc, dst) from exc


def keep_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """A durable second name for ``src``'s content: a hard link, a copy across file systems.
    Links are safe because a swap never writes a live file in place, it renames a new one."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:
        copy_durably(src, dst)


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


# --- the manifest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """Which generation is live and the hash of each of its files; written last."""

    generation: int
    files: dict[str, str]
    written_at: str
    #: hosts and pools of this generation (for the shrink guard)
    counts: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def from_dict(data: Any) -> Manifest:
        """From its JSON form; KeyError, TypeError, ValueError or AttributeError when bad."""
        return Manifest(
            int(data["generation"]),
            {str(k): str(v) for k, v in data["files"].items()},
            str(data["written_at"]),
            {str(k): int(v) for k, v in data.get("counts", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "files": self.files,
            "written_at": self.written_at,
            "counts": self.counts,
        }

    @staticmethod
    def load(directory: Path) -> Manifest | None:
        """The manifest in ``directory`` (the state directory or a running set); None when
        missing or unreadable."""
        try:
            data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            return Manifest.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def store(self, directory: Path) -> None:
        """Write it atomically into ``directory``. Raises PublishError."""
        try:
            replace_file(directory / MANIFEST, _json(self.to_dict()), 0o644)
        except OSError as exc:
            raise PublishError.of("manifest write", exc) from exc


def next_manifest(
    state_dir: Path, files: dict[str, str], counts: dict[str, int] | None = None
) -> Manifest:
    previous = Manifest.load(state_dir)
    return Manifest(
        generation=(previous.generation + 1) if previous else 1,
        files=dict(sorted(files.items())),
        written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        counts=dict(counts or {}),
    )


# --- the staged generation ------------------------------------------------------------------------


@dataclass
class Staged:
    """Files written next to their live paths, not yet live."""

    plan: Plan
    rendered: RenderedSet
    paths: dict[str, str] = field(default_factory=dict)  # live path -> staged path
    checks: list[str] = field(default_factory=list)

    def locate(self, path: str) -> str:
        """Where the validators should read ``path`` from."""
        if os.path.basename(path) in INCLUDERS or path in self.paths:
            name = os.path.basename(path)
            return sibling(path, CHECK_SUFFIX if name in INCLUDERS else STAGE_SUFFIX)
        return path


def clean_leftovers(dirs: Iterable[str]) -> list[str]:
    """Remove staged and check copies a crash left behind."""
    removed = []
    for d in dirs:
        with contextlib.suppress(OSError):
            for name in os.listdir(d):
                if name.startswith(".") and name.endswith((STAGE_SUFFIX, CHECK_SUFFIX)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(d, name))
                        removed.append(os.path.join(d, name))
    return removed


def target_dirs(rendered: RenderedSet) -> list[str]:
    return sorted({os.path.dirname(p) for p in rendered.files} | {rendered.cmts_dir})


def stage(plan: Plan, rendered: RenderedSet) -> Staged:
    """Write every changed file as a hidden sibling (fsynced). Raises PublishError."""
    staged = Staged(plan, rendered)
    try:
        for d in target_dirs(rendered):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise _named(exc, d) from exc
        for f in plan.write:
            tmp = sibling(f.path, STAGE_SUFFIX)
            staged.paths[f.path] = tmp  # first: a write that fails half-way is discarded too
            write_file(tmp, f.data, f.mode)
    except OSError as exc:
        discard(staged)
        raise PublishError.of("staging", exc) from exc
    return staged


def write_checks(
    staged: Staged, render_includers: Callable[[Callable[[str], str]], RenderedSet]
) -> None:
    """Copies of the include-bearing files that point at the staged files, for dhcpd -t."""
    try:
        for f in render_includers(staged.locate).files.values():
            check = sibling(f.path, CHECK_SUFFIX)
            staged.checks.append(check)
            write_file(check, f.data, 0o600)
    except OSError as exc:
        discard(staged)
        raise PublishError.of("staging", exc) from exc


def discard(staged: Staged) -> None:
    """Remove the staged and check copies (best effort: on a read-only file system even the
    unlink of a file that was never created fails, and the caller reports the first error)."""
    for tmp in [*staged.paths.values(), *staged.checks]:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    staged.paths.clear()
    staged.checks.clear()


# --- the journaled swap ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Journal:
    """A swap's intent: the staged -> live renames, the removals and the manifest they make."""

    renames: dict[str, str]  # live path -> staged path
    remove: tuple[str, ...]
    dirs: tuple[str, ...]
    manifest: Manifest

    def store(self, state_dir: Path) -> None:
        body = {
            "renames": self.renames,
            "remove": list(self.remove),
            "dirs": list(self.dirs),
            "manifest": self.manifest.to_dict(),
        }
        replace_file(state_dir / JOURNAL, _json(body))

    @staticmethod
    def load(state_dir: Path) -> Journal | None:
        """The pending journal; None when there is none. ValueError when it is unreadable."""
        try:
            text = (state_dir / JOURNAL).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return Journal(
                {str(k): str(v) for k, v in data["renames"].items()},
                tuple(str(p) for p in data["remove"]),
                tuple(str(d) for d in data["dirs"]),
                Manifest.from_dict(data["manifest"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{state_dir / JOURNAL}: {exc}") from exc


def _drop_journal(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / JOURNAL)
    fsync_dir(state_dir)


def _roll_forward(journal: Journal) -> None:
    for live, tmp in journal.renames.items():
        with contextlib.suppress(FileNotFoundError):  # renamed before the crash
            os.replace(tmp, live)
    for path in journal.remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for d in journal.dirs:
        fsync_dir(d)


def _keep_previous(paths: Iterable[str], state_dir: Path) -> None:
    """Keep what a swap is about to replace or remove, until it is complete.

    An index names every path and whether it existed (undoing deletes the ones that did not).
    """
    keep = state_dir / PREVIOUS
    # the index first: a crash inside rmtree must not leave an index naming deleted files
    with contextlib.suppress(FileNotFoundError):
        os.unlink(keep / "index.json")
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    index: dict[str, str | None] = {}
    for n, live in enumerate(paths):
        try:
            keep_file(live, keep / f"{n}")
        except FileNotFoundError:
            index[live] = None
            continue
        index[live] = f"{n}"
    write_file(keep / "index.json", _json({"files": index}), 0o600)
    fsync_dir(keep)


def _commit(state_dir: Path, journal: Journal) -> None:
    """Keep the previous files, journal, rename, remove, fsync, write the manifest, drop the
    journal. Raises OSError or PublishError before the journal is stored (nothing changed),
    PublishError after it (the set is whole again, old or new)."""
    if (state_dir / JOURNAL).exists():
        raise PublishError(f"an interrupted swap is pending in {state_dir}: recover() first")
    state_dir.mkdir(parents=True, exist_ok=True)
    _keep_previous([*journal.renames, *journal.remove], state_dir)
    journal.store(state_dir)
    try:
        _roll_forward(journal)
        journal.manifest.store(state_dir)
        _drop_journal(state_dir)
    except (OSError, PublishError) as exc:
        # renames may be half done: make it one whole generation again before reporting
        with contextlib.suppress(PublishError):
            recover(state_dir)
        raise PublishError(f"swap failed: {exc}") from exc
    shutil.rmtree(state_dir / PREVIOUS, ignore_errors=True)  # complete: nothing to undo


def swap(staged: Staged, state_dir: Path, counts: dict[str, int] | None = None) -> Manifest:
    """Make the staged set live as the next generation (see :func:`_commit`). A crash in
    between is repaired by :func:`recover`."""
    rendered = staged.rendered
    manifest = next_manifest(
        state_dir, {p: sha256(f.data) for p, f in rendered.files.items()}, counts
    )
    journal = Journal(
        dict(staged.paths), staged.plan.remove, tuple(target_dirs(rendered)), manifest
    )
    try:
        _commit(state_dir, journal)
    except OSError as exc:
        discard(staged)
        raise PublishError.of("swap", _named(exc, state_dir)) from exc
    except PublishError:
        discard(staged)
        raise
    finally:
        for check in staged.checks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(check)
    return manifest


def _forward_possible(journal: Journal) -> bool:
    """Every changed file is either still staged with the new content or already live."""
    for live, tmp in journal.renames.items():
        want = journal.manifest.files.get(live)
        for path in (tmp, live):
            try:
                if file_sha256(path) == want:
                    break
            except OSError:
                continue
        else:
            return False
    return True


def _restore_previous(state_dir: Path) -> None:
    """Put back the kept files; delete the paths that did not exist before the swap."""
    keep = state_dir / PREVIOUS
    index: dict[str, str | None] = json.loads((keep / "index.json").read_text(encoding="utf-8"))[
        "files"
    ]
    for live, saved in index.items():
        if saved is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(live)
            continue
        tmp = sibling(live, STAGE_SUFFIX)
        copy_durably(keep / saved, tmp)
        os.replace(tmp, live)
    for d in sorted({os.path.dirname(p) for p in index}):
        fsync_dir(d)


def recover(state_dir: Path) -> str | None:
    """Finish or undo a swap that a crash interrupted, so exactly one complete generation is
    live and the manifest names it. Call it before reading the live set: at startup and at the
    start of every publish (before planning and before clean_leftovers, which would delete
    the staged files a roll forward needs).

    Returns None (nothing pending), ``"completed"`` (only the journal was left),
    ``"rolled forward"`` (the staged files were still there: the new generation is live) or
    ``"rolled back"`` (the previous generation is live again). Raises PublishError when the
    file system refuses (then the journal stays for the next attempt).
    """
    try:
        journal = Journal.load(state_dir)
    except (OSError, ValueError) as exc:
        raise PublishError(f"swap journal unreadable: {exc}") from exc
    if journal is None:
        return None
    try:
        current = Manifest.load(state_dir)
        if current is not None and (current.generation, current.files) == (
            journal.manifest.generation,
            journal.manifest.files,
        ):
            outcome = "completed"
        elif _forward_possible(journal):
            _roll_forward(journal)
            journal.manifest.store(state_dir)
            outcome = "rolled forward"
        else:
            # the manifest is written after the last rename, so it still names the previous
            # generation, the one restored here
            _restore_previous(state_dir)
            for tmp in journal.renames.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            outcome = "rolled back"
        _drop_journal(state_dir)
    except OSError as exc:
        raise PublishError.of("recovery of an interrupted swap", exc) from exc
    except (ValueError, KeyError) as exc:  # the index of the kept files is damaged
        raise PublishError(
            f"recovery of an interrupted swap failed: {state_dir / PREVIOUS}: {exc}"
        ) from exc
    shutil.rmtree(state_dir / PREVIOUS, ignore_errors=True)
    return outcome


# --- the set dhcpd came up with, and the rollback to it -------------------------------------------


def running(state_dir: Path) -> Manifest | None:
    """The manifest of the set dhcpd last came up with (:func:`mark_running`); None if none."""
    return Manifest.load(state_dir / RUNNING)


def running_file(state_dir: Path, digest: str) -> Path:
    """Where the running set keeps the file with content ``digest`` (missing if it has none)."""
    return state_dir / RUNNING / digest


def mark_running(state_dir: Path) -> Manifest | None:
    """Record the live generation as the set dhcpd came up with: its files (hard links, copies
    across file systems, named by their hash) and its manifest in a new directory, fsynced,
    then the ``running`` symlink is switched to it by one rename. A crash leaves the old or
    the new running set complete. Returns the running manifest; None when nothing is live.
    Raises PublishError (then the previous running set stays)."""
    live = Manifest.load(state_dir)
    if live is None:
        return None
    known = running(state_dir)
    if known is not None and (known.generation, known.files) == (live.generation, live.files):
        return known
    target = state_dir / f"{RUNNING}.{live.generation}.{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S%f}"
    try:
        target.mkdir(parents=True)
        for path, digest in live.files.items():
            saved = target / digest
            if saved.exists():  # two paths with equal content
                continue
            keep_file(path, saved)
            if file_sha256(str(saved)) != digest:
                raise PublishError(
                    f"marking running failed: {path} is not the content the manifest of "
                    f"generation {live.generation} names (changed by hand?)"
                )
        live.store(target)
        fsync_dir(target)
        link = state_dir / f".{RUNNING}{STAGE_SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(target.name, link)
        os.replace(link, state_dir / RUNNING)
        fsync_dir(state_dir)
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise PublishError.of("marking the running set", exc) from exc
    except PublishError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _drop_unused_running(state_dir)
    return live


def keep_held(state_dir: Path, path: Path, digest: str) -> None:
    """Keep ``path`` (content ``digest``) beside the running set: a file dhcpd holds by OMAPI
    although the running set has another version (a partial live update: hosts went live,
    a pool waits for the restart), so that the next host delta can start from it. The
    running manifest is not touched (a rollback still restores the set dhcpd came up with).
    Raises PublishError."""
    saved = running_file(state_dir, digest)
    if saved.exists():
        return
    try:
        tmp = saved.with_name(f".{digest}{STAGE_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        keep_file(str(path), tmp)
        if file_sha256(str(tmp)) != digest:
            tmp.unlink()
            raise PublishError(f"keeping {path} failed: it changed while it was kept")
        os.replace(tmp, saved)
        fsync_dir(saved.parent)
    except OSError as exc:
        raise PublishError.of(f"keeping {path} beside the running set", exc) from exc


def _drop_unused_running(state_dir: Path) -> None:
    """Remove running-set directories the symlink does not point at (older, or half written
    by a crash)."""
    try:
        current = os.readlink(state_dir / RUNNING)
    except OSError:
        current = ""
    for entry in state_dir.glob(f"{RUNNING}.*"):
        if entry.name != current and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _is_cmts_file(path: str) -> bool:
    head, name = os.path.split(path)
    return os.path.basename(head) == "cmts_gws" and CMTS_FILE.match(name) is not None


def rollback(state_dir: Path) -> Manifest | None:
    """Make the running set live again as a new generation: every file of it is restored, and
    of the files only the live set has, the cmts_gws/<id>.conf ones are removed (nothing
    includes them any more); others stay (never delete the last configuration). Journaled
    like a swap: a crash in the middle is finished by :func:`recover`.

    Returns the new manifest (the live one when it already equals the running set), or None
    when no running set is known (a first install): then nothing on disk changes.
    """
    if (state_dir / JOURNAL).exists():
        raise PublishError(f"an interrupted swap is pending in {state_dir}: recover() first")
    back = running(state_dir)
    if back is None:
        return None
    live = Manifest.load(state_dir)
    live_files = live.files if live is not None else {}
    restore = {p: d for p, d in back.files.items() if live_files.get(p) != d}
    stale = tuple(sorted(p for p in live_files if p not in back.files and _is_cmts_file(p)))
    if live is not None and not restore and not stale:
        return live
    kept = {p: d for p, d in live_files.items() if p not in back.files and p not in stale}
    manifest = next_manifest(state_dir, {**kept, **back.files}, back.counts)
    source = state_dir / RUNNING
    renames: dict[str, str] = {}
    try:
        for path, digest in restore.items():
            tmp = sibling(path, STAGE_SUFFIX)
            renames[path] = tmp
            os.makedirs(os.path.dirname(path), exist_ok=True)
            copy_durably(source / digest, tmp)
        dirs = tuple(sorted({os.path.dirname(p) for p in [*restore, *stale]}))
        _commit(state_dir, Journal(renames, stale, dirs, manifest))
    except (OSError, PublishError) as exc:
        if not (state_dir / JOURNAL).exists():
            for tmp in renames.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        if isinstance(exc, PublishError):
            raise
        raise PublishError.of("rollback", exc) from exc
    return manifest


# --- one writer -----------------------------------------------------------------------------------


class Busy(Exception):
    """Another process holds the writer lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{path} is held by {holder}")


class WriterLock:
    """The one process that may publish into a state directory: a non-blocking flock on
    ``writer.lock`` (released by the kernel when the holder dies), with the holder's pid in
    it for the message. Raises :class:`Busy` on entry when another process holds it, and
    PublishError when the lock file cannot be made."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / WRITER_LOCK
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def acquire(self) -> WriterLock:
        """Take the lock now or raise :class:`Busy`."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PublishError.of("taking the writer lock", _named(exc, self.path)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise Busy(self.path, int(holder) if holder.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the flock
            self._fd = None
