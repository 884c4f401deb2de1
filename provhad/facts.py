"""Facts about this host the renderer needs besides the database: the OMAPI key to keep, the
modems whose TFTP config grants network access, the configfiles missing under the TFTP root."""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from provhad.config import Config
from provhad.model import Model
from provhad.plan import stamp
from provhad.render import OmapiKey
from provhad.snapshot import PackedRows

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


#: the listing of a TFTP directory that cannot be read (one object: the memo compares them)
_NONE: frozenset[str] = frozenset()


class ConfigfileCheck:
    """Which configfiles named in host entries are missing under the TFTP root, in O(change)
    from one cycle to the next: a TFTP directory is listed again only when its stamp changed
    (a file created, removed or renamed changes the directory's mtime), and a blob of the
    model's modems or MTAs is looked at again only when it is new (a changed chunk) or the
    listing changed. 500k modems and their configfiles cost a listing of the directory and a
    name per modem on every cycle otherwise."""

    def __init__(self) -> None:
        self.listed: dict[Path, tuple[ConfStamp, frozenset[str]]] = {}
        #: (sub, blob) -> how many of its configfiles are missing, and the first few
        self.memo: dict[tuple[str, bytes], tuple[int, list[str]]] = {}
        #: the listings the memo was made against
        self.against: tuple[frozenset[str], ...] = ()

    def present(self, folder: Path) -> frozenset[str]:
        """The names in ``folder`` (none when it cannot be listed), listed again only when its
        stamp changed."""
        try:
            now = stamp(str(folder))
        except OSError:
            self.listed.pop(folder, None)
            return _NONE
        known = self.listed.get(folder)
        if known is None or known[0] != now:
            try:
                names = frozenset(os.listdir(folder))
            except OSError:
                names = _NONE
            known = (now, names)
            self.listed[folder] = known
        return known[1]

    def missing(
        self,
        sub: str,
        rows: Sequence[Any],
        name: Callable[[Any], str],
        present: frozenset[str],
        memo: dict[tuple[str, bytes], tuple[int, list[str]]],
        keep: int,
    ) -> Iterator[tuple[int, list[str]]]:
        """Per blob of ``rows`` (a PackedRows of model items; anything else as one): how many
        of its ``sub/NAME`` are missing, and the first ``keep`` of them."""
        if not isinstance(rows, PackedRows):
            gone = [f"{sub}/{n}" for n in map(name, rows) if n not in present]
            yield len(gone), gone[:keep]
            return
        for blob in rows.blobs:
            key = (sub, blob)
            found = self.memo.get(key)
            if found is None:
                count, first = 0, list[str]()
                for n in map(name, rows.made(marshal.loads(blob))):
                    if n not in present:
                        count += 1
                        if len(first) < keep:
                            first.append(f"{sub}/{n}")
                found = (count, first)
            memo[key] = found
            yield found

    def __call__(self, cfg: Config, model: Model, keep: int = 20) -> tuple[int, list[str]]:
        """How many configfiles named in host entries are not under the TFTP root (such a
        modem reboots endlessly when this node answers it), and the first ``keep`` of them."""
        root = cfg.paths.under_root(cfg.paths.tftp_root)
        memo: dict[tuple[str, bytes], tuple[int, list[str]]] = {}
        cm = self.present(root / "cm")
        mta = self.present(root / "mta") if cfg.render.provvoip else _NONE
        if len(self.against) != 2 or self.against[0] is not cm or self.against[1] is not mta:
            self.memo, self.against = {}, (cm, mta)  # another listing: every blob again
        parts = self.missing("cm", model.modems, lambda m: f"{m.hostname}.cfg", cm, memo, keep)
        if cfg.render.provvoip:
            mtas = self.missing("mta", model.mtas, lambda t: f"mta-{t.id}.cfg", mta, memo, keep)
            parts = itertools.chain(parts, mtas)
        count, first = 0, list[str]()
        for n, names in parts:
            count += n
            first += names[: keep - len(first)]
        self.memo = memo  # only the blobs of this model: the others are gone
        return count, first


def missing_configfiles(cfg: Config, model: Model, keep: int = 20) -> tuple[int, list[str]]:
    """How many configfiles named in host entries are not under the TFTP root, and the first
    ``keep`` of them (see :class:`ConfigfileCheck`, which keeps what it found for the next
    call)."""
    return ConfigfileCheck()(cfg, model, keep)
