"""What a publish has to do (the rendered set against the live one) and the shrink policy: a set
that drops more hosts or pools than allowed waits for a person's confirmation of that very set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from provhad.config import SafetyConfig
from provhad.generations import (
    CMTS_FILE,
    Manifest,
    PublishError,
    file_sha256,
    replace_file,
)
from provhad.render import DHCPD, RenderedFile, RenderedSet

SHRINK_HELD = "shrink-held.json"
CONFIRM_SHRINK = "confirm-shrink"
#: how long a confirmation stays valid by default (seconds)
CONFIRM_TTL = 3600.0


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


#: a file's (inode, size, mtime, ctime): a rename or any write changes it
Stamp = tuple[int, int, int, int]


def stamp(path: str) -> Stamp:
    """``path``'s :data:`Stamp`; OSError when it cannot be stat()ed."""
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileDigests:
    """sha256 of files by path, read again only when a file's :data:`Stamp` changed.

    A rename (a new inode) or any write (ctime) changes the stamp, so a file whose stamp is the
    one seen before still holds the content hashed then (as state.DhcpdFiles relies on); a file
    provhad just published is passed to :meth:`remember` with the hash of what it wrote.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[Stamp, str]] = {}

    def digest(self, path: str) -> str:
        """sha256 of ``path``'s content; OSError when it cannot be read."""
        now = stamp(path)
        known = self._known.get(path)
        if known is None or known[0] != now:
            known = (now, file_sha256(path))
            self._known[path] = known
        return known[1]

    def remember(self, path: str, digest: str) -> None:
        """``path`` was just written with content of sha256 ``digest``."""
        try:
            self._known[path] = (stamp(path), digest)
        except OSError:
            self._known.pop(path, None)

    def keep_only(self, paths: Iterable[str]) -> None:
        """Forget every other path (files no longer in the set)."""
        keep = set(paths)
        for path in self._known.keys() - keep:
            # pop: the daemon's supervisor shares this cache from another thread
            self._known.pop(path, None)


#: the live files' digests, kept across the cycles of this process
LIVE = FileDigests()


def live_hashes(rendered: RenderedSet, digests: FileDigests | None = None) -> dict[str, str | None]:
    """Hash of each rendered path as it is on disk now (None: missing). With ``digests``,
    only files whose stamp changed since they were hashed or written are read."""
    known = digests or FileDigests()
    out: dict[str, str | None] = {}
    for path in rendered.files:
        try:
            out[path] = known.digest(path)
        except OSError:  # missing or unreadable: write it (staging reports what is wrong)
            out[path] = None
    known.keep_only(rendered.files)
    return out


def stale_files(rendered: RenderedSet) -> list[str]:
    """cmts_gws/<id>.conf files of gateways that are gone (upstream's observer deletes them)."""
    try:
        names = os.listdir(rendered.cmts_dir)
    except OSError:
        return []
    paths = (os.path.join(rendered.cmts_dir, n) for n in names if CMTS_FILE.match(n))
    return sorted(p for p in paths if p not in rendered.files)


def make_plan(rendered: RenderedSet, live: dict[str, str | None], stale: Iterable[str]) -> Plan:
    write: list[RenderedFile] = []
    same: list[RenderedFile] = []
    for path, f in rendered.files.items():
        (same if live.get(path) == f.digest else write).append(f)
    return Plan(tuple(write), tuple(stale), tuple(f.path for f in same))


# --- the shrink guard -----------------------------------------------------------------------------


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
            if CMTS_FILE.match(name):
                with open(os.path.join(rendered.cmts_dir, name), "rb") as fh:
                    pools += sum(1 for line in fh if line.strip() == b"pool")
    return {"hosts": hosts, "pools": pools}


@dataclass(frozen=True)
class ShrinkLimits:
    """A drop is held back only when it exceeds both the share and the absolute number: one
    deleted modem of eight is normal, a tenth of a big network is not."""

    max_percent: float = 10.0
    max_hosts: int = 50
    max_pools: int = 2

    @staticmethod
    def of(safety: SafetyConfig) -> ShrinkLimits:
        return ShrinkLimits(
            safety.max_shrink_percent, safety.max_shrink_hosts, safety.max_shrink_pools
        )


@dataclass(frozen=True)
class ShrinkVerdict:
    #: why the set is held back; empty: it may go live
    hold: str = ""
    #: big drops within the share: published, but said
    notes: tuple[str, ...] = ()


def judge_shrink(live: dict[str, int], new: dict[str, int], limits: ShrinkLimits) -> ShrinkVerdict:
    """Whether ``new`` removes too much of ``live``. Pure."""
    holds, notes = [], []
    for what, floor in (("hosts", limits.max_hosts), ("pools", limits.max_pools)):
        before, after = live.get(what, 0), new.get(what, 0)
        drop = before - after
        if before <= 0 or drop <= 0:
            continue
        share = drop * 100 / before
        over_share = drop * 100 > limits.max_percent * before
        if over_share and drop > floor:
            holds.append(
                f"shrink guard: {what} would drop from {before} to {after} (-{share:.0f}%, "
                f"more than {limits.max_percent:g}% and more than {floor})"
            )
        elif drop > floor:
            notes.append(
                f"{what} drop from {before} to {after} (-{drop}, -{share:.1f}%): more than "
                f"{floor} but within {limits.max_percent:g}%"
            )
    return ShrinkVerdict("; ".join(holds), tuple(notes))


@dataclass(frozen=True)
class ShrinkHold:
    """The set the guard holds back, for ``provhad confirm-shrink``."""

    set_hash: str
    reason: str
    counts: dict[str, dict[str, int]]  # "live" and "new"
    at: str

    def store(self, state_dir: Path) -> None:
        body = {"set": self.set_hash, "reason": self.reason, "counts": self.counts, "at": self.at}
        try:
            replace_file(state_dir / SHRINK_HELD, json.dumps(body, indent=1).encode(), 0o644)
        except OSError as exc:
            raise PublishError.of("writing the held set", exc) from exc

    @staticmethod
    def load(state_dir: Path) -> ShrinkHold | None:
        """None when nothing is held (or the file is unreadable: then nothing can be confirmed)."""
        try:
            data = json.loads((state_dir / SHRINK_HELD).read_text(encoding="utf-8"))
            return ShrinkHold(
                str(data["set"]),
                str(data["reason"]),
                {str(k): {str(n): int(c) for n, c in v.items()} for k, v in data["counts"].items()},
                str(data["at"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    @staticmethod
    def clear(state_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / SHRINK_HELD)


@dataclass(frozen=True)
class Confirmation:
    """A person's release of one held set, until it expires."""

    set_hash: str
    expires_at: dt.datetime

    def store(self, state_dir: Path) -> None:
        body = {"set": self.set_hash, "expires_at": self.expires_at.isoformat(timespec="seconds")}
        replace_file(state_dir / CONFIRM_SHRINK, json.dumps(body, indent=1).encode(), 0o644)

    @staticmethod
    def load(state_dir: Path) -> Confirmation | None:
        """The confirmation on disk; None when there is none. ValueError when unreadable."""
        try:
            text = (state_dir / CONFIRM_SHRINK).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            expires = dt.datetime.fromisoformat(str(data["expires_at"]))
            if expires.tzinfo is None:
                raise ValueError("expires_at has no time zone")
            return Confirmation(str(data["set"]), expires)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{state_dir / CONFIRM_SHRINK}: not a confirmation ({exc})") from exc


def confirmation_problem(confirmation: Confirmation, set_hash: str, now: dt.datetime) -> str | None:
    """Why ``confirmation`` does not release ``set_hash`` at ``now``; None when it does. Pure."""
    if confirmation.set_hash != set_hash:
        return (
            f"ignored a shrink confirmation for another set ({confirmation.set_hash[:12]}, "
            f"held now: {set_hash[:12]})"
        )
    if now >= confirmation.expires_at:
        return (
            f"ignored a shrink confirmation that expired at "
            f"{confirmation.expires_at.isoformat(timespec='seconds')}"
        )
    return None


def take_confirmation(state_dir: Path, set_hash: str, now: dt.datetime) -> tuple[bool, str]:
    """Consume the confirmation on disk: (whether it releases ``set_hash``, why it does not
    when there is one). A stale, foreign or unreadable confirmation is removed too (reported
    once; a person confirms the set that is held now)."""
    try:
        confirmation = Confirmation.load(state_dir)
    except (OSError, ValueError) as exc:
        problem: str | None = f"ignored an unreadable shrink confirmation: {exc}"
    else:
        if confirmation is None:
            return False, ""
        problem = confirmation_problem(confirmation, set_hash, now)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / CONFIRM_SHRINK)
    return problem is None, problem or ""
