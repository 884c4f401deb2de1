"""The file edge: what is live, staging next to it, validation by the real daemons, the swap.

Staged files are hidden siblings of their live paths (``.NAME.provhad-new``) so the swap is a
rename on the same file system. The set is validated as it will be live: files that did not
change are read from their live path, changed ones from their staged copy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from provhad.config import Config, ValidateConfig
from provhad.model import Model
from provhad.render import (
    CHRONY,
    DDNS,
    DHCPD,
    INCLUDERS,
    NAMED,
    OmapiKey,
    RenderedFile,
    RenderedSet,
)
from provhad.services import child_env

STAGE_SUFFIX = ".provhad-new"
CHECK_SUFFIX = ".provhad-check"
MANIFEST = "manifest.json"
_CMTS_FILE = re.compile(r"^\d+\.conf$")
_DHCPD_ERROR = re.compile(r"^(?P<path>/\S+) line (?P<line>\d+): (?P<msg>.*)$")


class PublishError(Exception):
    """Staging or swapping failed (disk full, read-only file system ...); live set untouched."""


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


# --- what is live -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a publish has to do to make the rendered set live. Pure data."""

    write: tuple[RenderedFile, ...]
    remove: tuple[str, ...]
    unchanged: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.write and not self.remove

    def services(self) -> set[str]:
        """Daemons whose files change (a removed cmts_gws file is dhcpd's)."""
        return {f.service for f in self.write} | ({DHCPD} if self.remove else set())


def live_hashes(rendered: RenderedSet) -> dict[str, str | None]:
    """Hash of each rendered path as it is on disk now (None: missing)."""
    out: dict[str, str | None] = {}
    for path in rendered.files:
        try:
            out[path] = file_sha256(path)
        except OSError:  # missing or unreadable: write it (staging reports what is wrong)
            out[path] = None
    return out


def stale_files(rendered: RenderedSet) -> list[str]:
    """cmts_gws/<id>.conf files of gateways that are gone (upstream's observer deletes them)."""
    try:
        names = os.listdir(rendered.cmts_dir)
    except OSError:
        return []
    paths = (os.path.join(rendered.cmts_dir, n) for n in names if _CMTS_FILE.match(n))
    return sorted(p for p in paths if p not in rendered.files)


def make_plan(rendered: RenderedSet, live: dict[str, str | None], stale: Iterable[str]) -> Plan:
    write: list[RenderedFile] = []
    same: list[RenderedFile] = []
    for path, f in rendered.files.items():
        (same if live.get(path) == sha256(f.data) else write).append(f)
    return Plan(tuple(write), tuple(stale), tuple(f.path for f in same))


# --- facts about this host the renderer needs --------------------------------------------------

_OMAPI_KEY = re.compile(
    r"key\s+(?P<name>[A-Za-z0-9_.-]+)\s*\{[^}]*?secret\s+\"?(?P<secret>[A-Za-z0-9+/=]+)\"?\s*;",
    re.S,
)
_PRIVATE_KEY = re.compile(r"^Key:\s*(?P<secret>[A-Za-z0-9+/=]+)\s*$", re.M)


def find_omapi_key(cfg: Config) -> OmapiKey | None:
    """The OMAPI key to keep: the configured secret, else the live failover.conf's key block,
    else the ``K<name>.+157+*.private`` file dnssec-keygen left at install time."""
    name = cfg.render.omapi_key_name
    if cfg.render.omapi_secret:
        return OmapiKey(name, cfg.render.omapi_secret)
    dhcp_dir = cfg.paths.under_root(cfg.paths.dhcp_dir)
    with contextlib.suppress(OSError):
        found = _OMAPI_KEY.search((dhcp_dir / "failover.conf").read_text(encoding="utf-8"))
        if found:
            return OmapiKey(found.group("name"), found.group("secret"))
    with contextlib.suppress(OSError):
        for private in sorted(dhcp_dir.glob(f"K{name}.+*.private")):
            match = _PRIVATE_KEY.search(private.read_text(encoding="utf-8"))
            if match:
                return OmapiKey(name, match.group("secret"))
    return None


_NETWORK_ACCESS = re.compile(r"NetworkAccess\s+1\s*;")
#: what identifies a TFTP .conf file's content without reading it: inode, size, mtime, ctime
ConfStamp = tuple[int, int, int, int]


def network_access_hosts(
    cfg: Config, cache: dict[str, tuple[ConfStamp, bool]] | None = None
) -> frozenset[str]:
    """Modems whose TFTP ``cm/<hostname>.conf`` says ``NetworkAccess 1`` (for ignore-cpe.conf).

    There is one such file per modem. With ``cache`` (kept by the caller between cycles),
    a file whose inode, size and times are unchanged is not read again; the caller drops
    the cache now and then (the daemon at every full read), because a rewrite of the same
    size within one tick of the file system's clock keeps all four.
    """
    cm_dir = cfg.paths.under_root(cfg.paths.tftp_root) / "cm"
    seen: dict[str, tuple[ConfStamp, bool]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(cm_dir):
            if not entry.name.endswith(".conf"):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat()
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = cache.get(entry.name) if cache is not None else None
                if known is not None and known[0] == stamp:
                    seen[entry.name] = known
                    continue
                text = Path(entry.path).read_text(encoding="utf-8", errors="replace")
                seen[entry.name] = (stamp, _NETWORK_ACCESS.search(text) is not None)
    if cache is not None:
        cache.clear()
        cache.update(seen)
    return frozenset(name[: -len(".conf")] for name, (_, access) in seen.items() if access)


def missing_configfiles(cfg: Config, model: Model, keep: int = 20) -> tuple[int, list[str]]:
    """How many configfiles named in host entries are not under the TFTP root (such a modem
    reboots endlessly when this node answers it), and the first ``keep`` of them."""
    root = cfg.paths.under_root(cfg.paths.tftp_root)
    present: dict[str, set[str]] = {}
    for sub in ("cm", "mta"):
        try:
            present[sub] = set(os.listdir(root / sub))
        except OSError:
            present[sub] = set()
    wanted: Iterable[tuple[str, str]] = (("cm", f"{m.hostname}.cfg") for m in model.modems)
    if cfg.render.provvoip:
        mtas = (("mta", f"mta-{t.id}.cfg") for t in model.mtas)
        wanted = itertools.chain(wanted, mtas)
    count, first = 0, list[str]()
    for sub, name in wanted:  # one at a time: with an empty TFTP root that is every host
        if name not in present[sub]:
            count += 1
            if len(first) < keep:
                first.append(f"{sub}/{name}")
    return count, first


# --- validation by the real daemons ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One complaint of a validator, mapped back to a live path when it names a file."""

    service: str
    message: str
    path: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        if self.path and self.line is not None:
            where = f"{self.path} line {self.line}: "
        return f"{self.service}: {where}{self.message}"


@dataclass
class Validation:
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # dhcpd echoes the offending bytes of a file back
            timeout=timeout,
            start_new_session=True,  # so a timeout kills nothing of ours
            check=False,
            env=child_env(),
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer within {timeout:.0f} s"
    return proc.returncode, proc.stdout + proc.stderr


def parse_dhcpd_errors(output: str) -> list[Problem]:
    """dhcpd -t's ``FILE line N: message`` lines; else its last meaningful line."""
    found = []
    for line in output.splitlines():
        m = _DHCPD_ERROR.match(line.strip())
        if m:
            found.append(Problem(DHCPD, m["msg"], live_path(m["path"]), int(m["line"])))
    if found:
        return found
    lines = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and ("error" in ln.lower() or "exiting" in ln.lower() or "not found" in ln)
    ]
    return [Problem(DHCPD, lines[0] if lines else "dhcpd -t failed without a message")]


# --- the staged generation ---------------------------------------------------------------------


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


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            os.makedirs(d, exist_ok=True)
        for f in plan.write:
            tmp = sibling(f.path, STAGE_SUFFIX)
            staged.paths[f.path] = tmp  # first: a write that fails half-way is discarded too
            _write(tmp, f.data, f.mode)
    except OSError as exc:
        discard(staged)
        raise PublishError(f"staging failed: {exc.strerror or exc} ({exc.filename})") from exc
    return staged


def write_checks(
    staged: Staged, render_includers: Callable[[Callable[[str], str]], RenderedSet]
) -> None:
    """Copies of the include-bearing files that point at the staged files, for dhcpd -t."""
    try:
        for f in render_includers(staged.locate).files.values():
            check = sibling(f.path, CHECK_SUFFIX)
            staged.checks.append(check)
            _write(check, f.data, 0o600)
    except OSError as exc:
        discard(staged)
        raise PublishError(f"staging failed: {exc.strerror or exc} ({exc.filename})") from exc


def validate(staged: Staged, vcfg: ValidateConfig, services: set[str] | None = None) -> Validation:
    """Run each real daemon's parser over the staged set as it would be live."""
    rendered = staged.rendered
    wanted = services if services is not None else {DHCPD, NAMED, CHRONY, DDNS}
    result = Validation()
    if DHCPD in wanted:
        conf = staged.locate(rendered.dhcpd_conf)
        rc, out = _run([vcfg.dhcpd, "-t", "-cf", conf], vcfg.timeout)
        result.checked.append("dhcpd -t")
        if rc != 0:
            result.problems.extend(parse_dhcpd_errors(out))
    for f in rendered.by_service(NAMED) if NAMED in wanted else []:
        rc, out = _run([vcfg.named_checkconf, staged.locate(f.path)], vcfg.timeout)
        result.checked.append("named-checkconf")
        if rc != 0:
            result.problems.append(Problem(NAMED, _clean(out, staged), f.path))
    for f in rendered.by_service(CHRONY) if CHRONY in wanted else []:
        rc, out = _run([vcfg.chronyd, "-p", "-f", staged.locate(f.path)], vcfg.timeout)
        result.checked.append("chronyd -p")
        if rc != 0:
            result.problems.append(Problem(CHRONY, _clean(out, staged), f.path))
    for f in rendered.by_service(DDNS) if DDNS in wanted else []:
        rc, out = _run(["sh", "-n", staged.locate(f.path)], vcfg.timeout)
        result.checked.append("sh -n")
        if rc != 0:
            result.problems.append(Problem(DDNS, _clean(out, staged), f.path))
    return result


def _clean(output: str, staged: Staged) -> str:
    text = " ".join(output.split())
    for live, tmp in staged.paths.items():
        text = text.replace(tmp, live)
    return text or "rejected without a message"


def probe_dhcpd(rendered: RenderedSet, vcfg: ValidateConfig) -> bool:
    """Whether dhcpd accepts a small self-contained set (written as is, e.g. into a temp root)."""
    for f in rendered.files.values():
        if f.service == DHCPD:
            os.makedirs(os.path.dirname(f.path), exist_ok=True)
            Path(f.path).write_bytes(f.data)
    rc, _out = _run([vcfg.dhcpd, "-t", "-cf", rendered.dhcpd_conf], vcfg.timeout)
    return rc == 0


def discard(staged: Staged) -> None:
    """Remove the staged and check copies (best effort: on a read-only file system even the
    unlink of a file that was never created fails, and the caller reports the first error)."""
    for tmp in [*staged.paths.values(), *staged.checks]:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    staged.paths.clear()
    staged.checks.clear()


@dataclass(frozen=True)
class Manifest:
    """Which generation is live and the hash of each of its files; written last."""

    generation: int
    files: dict[str, str]
    written_at: str
    #: hosts and pools of this generation (for the shrink guard)
    counts: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def load(state_dir: Path) -> Manifest | None:
        try:
            data = json.loads((state_dir / MANIFEST).read_text(encoding="utf-8"))
            return Manifest(
                int(data["generation"]),
                dict(data["files"]),
                str(data["written_at"]),
                {str(k): int(v) for k, v in data.get("counts", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


CONFIRM_SHRINK = "confirm-shrink"


def live_counts(state_dir: Path, rendered: RenderedSet) -> dict[str, int]:
    """Hosts and pools of the live set: from the manifest, else counted in the live files
    (a set written by something else, e.g. upstream's cron job, before provhad's first run)."""
    manifest = Manifest.load(state_dir)
    if manifest is not None and manifest.counts:
        return manifest.counts
    hosts = 0
    for name in ("modems-host.conf", "endpoints-host.conf", "mta.conf"):
        with contextlib.suppress(OSError), open(f"{rendered.dhcp_dir}/{name}", "rb") as fh:
            hosts += sum(1 for line in fh if line.startswith(b"host "))
    pools = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(rendered.cmts_dir):
            if _CMTS_FILE.match(name):
                with open(os.path.join(rendered.cmts_dir, name), "rb") as fh:
                    pools += sum(1 for line in fh if line.strip() == b"pool")
    return {"hosts": hosts, "pools": pools}


def shrink_problem(live: dict[str, int], new: dict[str, int], max_percent: float) -> str | None:
    """Why ``new`` removes too much of ``live``, or None. Pure."""
    for what in ("hosts", "pools"):
        before, after = live.get(what, 0), new.get(what, 0)
        if before and (before - after) * 100 > max_percent * before:
            return (
                f"shrink guard: {what} would drop from {before} to {after} "
                f"(-{(before - after) * 100 / before:.0f}%, more than {max_percent:g}%)"
            )
    return None


def take_confirmation(state_dir: Path) -> bool:
    """Consume a person's one-shot confirmation (``provhad confirm-shrink``)."""
    try:
        os.unlink(state_dir / CONFIRM_SHRINK)
    except FileNotFoundError:
        return False
    return True


PREVIOUS = "previous"
#: The swap's intent, written (fsynced) before its first rename and removed after the manifest.
JOURNAL = "swap-journal.json"


def _keep_previous(staged: Staged, state_dir: Path) -> None:
    """Save what the swap is about to replace or remove, for a rollback.

    Hard links cost nothing; a copy when the state directory is on another file system. An
    index names every path and whether it existed (a rollback deletes the ones that did not).
    """
    keep = state_dir / PREVIOUS
    # the index first: a crash inside rmtree must not leave an index naming deleted files
    with contextlib.suppress(FileNotFoundError):
        os.unlink(keep / "index.json")
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    index: dict[str, str | None] = {}
    for n, live in enumerate([*staged.paths, *staged.plan.remove]):
        saved = keep / f"{n}"
        try:
            os.link(live, saved)
        except FileNotFoundError:
            index[live] = None
            continue
        except OSError:
            shutil.copy2(live, saved)
        index[live] = saved.name
    previous = Manifest.load(state_dir)
    body = {"files": index, "manifest": previous.__dict__ if previous else None}
    _write(str(keep / "index.json"), json.dumps(body, indent=1).encode(), 0o600)
    _fsync_dir(str(keep))


def _next_manifest(
    state_dir: Path, files: dict[str, str], counts: dict[str, int] | None = None
) -> Manifest:
    previous = Manifest.load(state_dir)
    return Manifest(
        generation=(previous.generation + 1) if previous else 1,
        files=dict(sorted(files.items())),
        written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        counts=dict(counts or {}),
    )


def _write_manifest(
    state_dir: Path, files: dict[str, str], counts: dict[str, int] | None = None
) -> Manifest:
    return _store_manifest(state_dir, _next_manifest(state_dir, files, counts))


def _store_manifest(state_dir: Path, manifest: Manifest) -> Manifest:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = str(state_dir / f".{MANIFEST}{STAGE_SUFFIX}")
        body = json.dumps(manifest.__dict__, indent=1, sort_keys=True).encode()
        _write(tmp, body, 0o644)
        os.replace(tmp, state_dir / MANIFEST)
        _fsync_dir(str(state_dir))
    except OSError as exc:
        raise PublishError(f"manifest write failed: {exc.strerror or exc}") from exc
    return manifest


@dataclass(frozen=True)
class Journal:
    """A swap's intent: the staged -> live renames, the removals and the manifest they make."""

    renames: dict[str, str]  # live path -> staged path
    remove: tuple[str, ...]
    dirs: tuple[str, ...]
    manifest: Manifest
    #: written by rollback(): once done, the kept previous files are used up
    undo: bool = False

    def store(self, state_dir: Path) -> None:
        body = {
            "renames": self.renames,
            "remove": list(self.remove),
            "dirs": list(self.dirs),
            "manifest": self.manifest.__dict__,
            "undo": self.undo,
        }
        tmp = state_dir / f".{JOURNAL}{STAGE_SUFFIX}"
        try:
            _write(str(tmp), json.dumps(body, indent=1).encode(), 0o600)
            os.replace(tmp, state_dir / JOURNAL)
            _fsync_dir(str(state_dir))
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @staticmethod
    def load(state_dir: Path) -> Journal | None:
        """The pending journal; None when there is none. ValueError when it is unreadable."""
        try:
            data = json.loads((state_dir / JOURNAL).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        try:
            m = data["manifest"]
            return Journal(
                {str(k): str(v) for k, v in data["renames"].items()},
                tuple(str(p) for p in data["remove"]),
                tuple(str(d) for d in data["dirs"]),
                Manifest(
                    int(m["generation"]),
                    {str(k): str(v) for k, v in m["files"].items()},
                    str(m["written_at"]),
                    {str(k): int(v) for k, v in m.get("counts", {}).items()},
                ),
                bool(data.get("undo", False)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{state_dir / JOURNAL}: {exc}") from exc


def _drop_journal(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / JOURNAL)
    _fsync_dir(str(state_dir))


def _roll_forward(journal: Journal) -> None:
    for live, tmp in journal.renames.items():
        with contextlib.suppress(FileNotFoundError):  # renamed before the crash
            os.replace(tmp, live)
    for path in journal.remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for d in journal.dirs:
        _fsync_dir(d)


def swap(staged: Staged, state_dir: Path, counts: dict[str, int] | None = None) -> Manifest:
    """Keep the previous files, journal the intent, rename the staged files into place, remove
    stale ones, fsync, then write the manifest (it tells which generation is complete and
    live) and drop the journal. A crash in between is repaired by :func:`recover`."""
    rendered = staged.rendered
    try:
        if (state_dir / JOURNAL).exists():
            raise PublishError(f"an interrupted swap is pending in {state_dir}: recover() first")
        state_dir.mkdir(parents=True, exist_ok=True)
        manifest = _next_manifest(
            state_dir, {p: sha256(f.data) for p, f in rendered.files.items()}, counts
        )
        journal = Journal(
            dict(staged.paths), staged.plan.remove, tuple(target_dirs(rendered)), manifest
        )
        _keep_previous(staged, state_dir)
        journal.store(state_dir)
    except OSError as exc:
        discard(staged)
        raise PublishError(f"swap failed: {exc.strerror or exc} ({exc.filename})") from exc
    finally:
        for check in staged.checks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(check)
    try:
        _roll_forward(journal)
        _store_manifest(state_dir, manifest)
        _drop_journal(state_dir)
    except (OSError, PublishError) as exc:
        # renames may be half done: make it one whole generation again before reporting
        with contextlib.suppress(PublishError):
            recover(state_dir)
        raise PublishError(f"swap failed: {exc}") from exc
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


def _restore(index: dict[str, str | None], keep: Path) -> None:
    """Put back the kept files named in ``index``; delete the paths that did not exist."""
    for live, saved in index.items():
        if saved is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(live)
            continue
        tmp = sibling(live, STAGE_SUFFIX)
        shutil.copy2(keep / saved, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, live)
    for d in sorted({os.path.dirname(p) for p in index}):
        _fsync_dir(d)


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
            _drop_journal(state_dir)
            return "completed"
        if _forward_possible(journal):
            _roll_forward(journal)
            _store_manifest(state_dir, journal.manifest)
            if journal.undo:
                shutil.rmtree(state_dir / PREVIOUS, ignore_errors=True)
            _drop_journal(state_dir)
            return "rolled forward"
        keep = state_dir / PREVIOUS
        body = json.loads((keep / "index.json").read_text(encoding="utf-8"))
        _restore(body["files"], keep)
        for tmp in journal.renames.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # the manifest is written after the last rename, so it still names the previous
        # generation; the kept copy of it is rewritten only in case it was lost
        if Manifest.load(state_dir) is None and body.get("manifest"):
            old = body["manifest"]
            _store_manifest(
                state_dir,
                Manifest(
                    int(old["generation"]),
                    dict(old["files"]),
                    str(old["written_at"]),
                    dict(old.get("counts", {})),
                ),
            )
        shutil.rmtree(keep, ignore_errors=True)  # it now equals the live set
        _drop_journal(state_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise PublishError(f"recovery of an interrupted swap failed: {exc}") from exc
    return "rolled back"


def rollback(state_dir: Path) -> Manifest | None:
    """Put back what the last swap replaced or removed (and delete what it created), as a new
    generation. Journaled like a swap: a crash in the middle is finished by :func:`recover`.

    Returns the new manifest, or None when there is nothing to roll back to.
    """
    keep = state_dir / PREVIOUS
    try:
        body = json.loads((keep / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    index: dict[str, str | None] = body["files"]
    old = body.get("manifest")
    manifest = _next_manifest(
        state_dir,
        dict(old["files"]) if old else {},
        dict(old.get("counts", {})) if old else None,
    )
    if (state_dir / JOURNAL).exists():
        raise PublishError(f"an interrupted swap is pending in {state_dir}: recover() first")
    renames: dict[str, str] = {}
    try:
        for live, saved in index.items():
            if saved is not None:
                tmp = sibling(live, STAGE_SUFFIX)
                shutil.copy2(keep / saved, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                renames[live] = tmp
        gone = tuple(p for p, saved in index.items() if saved is None)
        dirs = tuple(sorted({os.path.dirname(p) for p in index}))
        journal = Journal(renames, gone, dirs, manifest, undo=True)
        journal.store(state_dir)
        _roll_forward(journal)
        _store_manifest(state_dir, manifest)
        shutil.rmtree(keep, ignore_errors=True)  # before the journal goes: see recover()
        _drop_journal(state_dir)
    except OSError as exc:
        if not (state_dir / JOURNAL).exists():
            for tmp in renames.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        raise PublishError(f"rollback failed: {exc.strerror or exc} ({exc.filename})") from exc
    return manifest
