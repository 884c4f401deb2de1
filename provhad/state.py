"""What the daemon knows and saves: the state file, and what dhcpd runs versus what is live.

Three facts about dhcpd are kept apart and never inferred from one another:

- *applied*: the digest of dhcpd's files as they are on disk now (measured, whoever wrote them);
- *running*: the digest of the files dhcpd last came up with (saved, fsynced, after a restart
  that passed its check);
- *held*: a rendered set the real dhcpd refused, not published again until data or config change.

A restart is due exactly when applied differs from running. ``provhad check`` and ``provhad
status`` import this module, not the daemon.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from provhad.generations import replace_file
from provhad.plan import FileDigests

STATE_FILE = "state.json"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class State:
    """What the daemon knows; saved as JSON after every change of it (``provhad status``)."""

    pid: int = 0
    node: str = ""
    started_at: str = ""
    status: str = "starting"
    last_cycle_at: str = ""
    last_cycle_ok: bool = False
    last_success_at: str = ""
    last_trigger: str = ""
    last_duration_ms: float = 0.0
    last_error: str = ""
    #: failed cycles in a row (each is retried with a growing pause)
    failures: int = 0
    generation: int | None = None
    db_ok: bool = False
    db_node: str = ""
    db_error: str = ""
    mqtt: str = "off"
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    missing_configfiles: int = 0
    #: digest of dhcpd's files on disk ("applied") and of those it last came up with ("running")
    dhcpd_applied_set: str = ""
    dhcpd_running_set: str = ""
    #: the live generation when dhcpd last came up, and when that was
    dhcpd_running_generation: int | None = None
    dhcpd_last_restart_at: str = ""
    dhcpd_last_restart_ok: bool = True
    #: seconds the last successful restart (command and check) took
    dhcpd_restart_s: float = 0.0
    dhcpd_error: str = ""
    #: restarts that failed in a row (retried with backoff)
    dhcpd_failures: int = 0
    #: dhcpd's files (path below dhcp_dir -> sha256) as dhcpd holds them: the base of the
    #: host delta that OMAPI applies
    dhcpd_running_files: dict[str, str] = field(default_factory=dict)
    #: the live dhcpd files were published with only their changed hosts checked by dhcpd -t:
    #: the whole set is proven before dhcpd is restarted with it
    dhcpd_unproven: bool = False
    #: an OMAPI update was under way: if this is still set at start, what dhcpd holds is
    #: unknown and it is restarted
    omapi_inflight: bool = False
    #: hosts changed live by OMAPI since the daemon started; the last delta; the last fallback
    omapi_hosts: int = 0
    omapi_last: str = ""
    omapi_fallback: str = ""
    #: whether host changes can go live: "on", or "off (why)"; "" before the first try
    omapi: str = ""
    #: CLOCK_MONOTONIC µs when the last SIGHUP was taken (= RELOADING=1's MONOTONIC_USEC) and
    #: when its cycle ended (just before READY=1): `provhad reload` waits for the second
    reload_started_usec: int = 0
    reload_finished_usec: int = 0
    #: why the last SIGHUP's configuration was refused ("" when it was taken)
    reload_error: str = ""
    #: service (named, chrony, kea6) -> why its last reload failed; dropped when one succeeds
    reload_errors: dict[str, str] = field(default_factory=dict)
    held_set: str = ""
    held_reason: str = ""
    rollbacks: int = 0
    #: the configfile hook (provhad.hook): when it last ran, how, how long
    hook_last_at: str = ""
    hook_ok: bool | None = None
    hook_seconds: float = 0.0
    hook_error: str = ""

    @property
    def omapi_fell_back(self) -> bool:
        """Whether the last live update fell back to a restart (ISO times sort as text)."""
        return bool(self.omapi_fallback) and self.omapi_fallback[:25] > self.omapi_last[:25]

    @property
    def restart_pending(self) -> bool:
        return self.dhcpd_applied_set != self.dhcpd_running_set

    def save(self, state_dir: Path) -> None:
        """Write the state file durably (fsynced; a crash leaves the old or the new one)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self) | {"restart_pending": self.restart_pending}
        replace_file(
            state_dir / STATE_FILE, json.dumps(data, indent=1, sort_keys=True).encode(), 0o644
        )

    @staticmethod
    def parse(data: object) -> State:
        """A State from the state file's JSON; unknown keys are ignored. ValueError if not
        an object."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(State)}
        return State(**{k: v for k, v in data.items() if k in known})

    @staticmethod
    def load(state_dir: Path) -> State:
        """The saved state; a fresh one when there is none or it is unreadable."""
        try:
            return State.parse(json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return State()


class DhcpdFiles:
    """The digest of the files dhcpd reads: every ``*.conf`` below the dhcp directory.

    Measured from disk, so a set published by anyone (``provhad render``, a person, a crash
    between the swap and the state file) counts. A file is hashed again only when its
    :data:`~provhad.plan.Stamp` changed (the live files are replaced by rename, which changes
    the inode). ``digests``: shared with the cycle's plan in the daemon (``plan.LIVE``), so a
    file the cycle has just written is not read again here.
    """

    def __init__(self, dhcp_dir: Path, digests: FileDigests | None = None) -> None:
        self.dhcp_dir = dhcp_dir
        self.digests = FileDigests() if digests is None else digests
        #: path below dhcp_dir -> sha256, as of the last digest()
        self.hashes: dict[str, str] = {}

    def _files(self) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(self.dhcp_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(".conf") and not name.startswith("."):
                    yield Path(dirpath, name)

    def digest(self) -> str:
        """sha256 over (relative path, content hash) of each file; "" when there are none."""
        total = hashlib.sha256()
        hashes: dict[str, str] = {}
        for path in self._files():
            with contextlib.suppress(OSError):
                known = self.digests.digest(str(path))
                rel = str(path.relative_to(self.dhcp_dir))
                hashes[rel] = known
                total.update(f"{rel}\0{known}\0".encode())
        self.hashes = hashes
        return total.hexdigest() if hashes else ""
