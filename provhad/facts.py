"""Facts about this host the renderer needs besides the database: the OMAPI key to keep, the
modems whose TFTP config grants network access, the configfiles missing under the TFTP root."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterable
from pathlib import Path

from provhad.config import Config
from provhad.model import Model
from provhad.render import OmapiKey

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
