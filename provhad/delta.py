"""The host delta: what changed between the host files dhcpd runs and the live ones.

The files stay the source of truth. A host is one line of ``modems-host.conf``, ``mta.conf``
or ``endpoints-host.conf`` (as the templates write them), so the delta between two versions of
those files is the multiset difference of their lines; each line is parsed back into what
OMAPI carries (name, hardware address, fixed address, the remaining statements). A line OMAPI
cannot carry (``host-identifier option agent.remote-id``: OMAPI has no such attribute) makes
the whole delta impossible, and dhcpd is restarted instead. Pure: bytes in, delta out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The dhcpd files made of one host per line; a change confined to them can go live by OMAPI.
HOST_FILES = frozenset({"modems-host.conf", "mta.conf", "endpoints-host.conf"})

_HOST = re.compile(rb"^host (?P<name>\S+) \{ ?(?P<body>.*?) ?\}$")
_HARDWARE = re.compile(r"^hardware ethernet (?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})$")
_FIXED = re.compile(r"^fixed-address (?P<ip>\d{1,3}(?:\.\d{1,3}){3})$")


class NotLive(Exception):
    """This change cannot go live by OMAPI (the reason is the message): restart dhcpd."""


@dataclass(frozen=True)
class Host:
    """One host as OMAPI creates it."""

    name: str
    mac: str
    fixed_address: str | None
    #: the other statements, each ending in ';', as dhcpd parses them in the config file
    statements: str

    def line(self) -> str:
        """For messages: the host as a config line (not byte-identical to the template)."""
        fixed = f" fixed-address {self.fixed_address};" if self.fixed_address else ""
        return f"host {self.name} {{ hardware ethernet {self.mac};{fixed} {self.statements} }}"


def _statements(body: str) -> list[str]:
    """The statements of a host's body, split at ';' outside double quotes."""
    out, cur, quoted, escaped = [], [], False, False
    for ch in body:
        cur.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(cur[:-1]).strip())
            cur = []
    if "".join(cur).strip() or quoted:
        raise NotLive(f"unterminated statement in {body!r}")
    return [s for s in out if s]


def parse(line: bytes) -> Host:
    """A host line as the templates write it. NotLive when OMAPI cannot carry it."""
    m = _HOST.match(line)
    if m is None:
        raise NotLive(f"not a host line: {line[:80]!r}")
    name = m["name"].decode("utf-8", "strict")
    mac, fixed, rest = None, None, []
    for stmt in _statements(m["body"].decode("utf-8", "strict")):
        if (hw := _HARDWARE.match(stmt)) is not None:
            mac = hw["mac"]
        elif (ip := _FIXED.match(stmt)) is not None:
            fixed = ip["ip"]
        elif stmt.startswith("host-identifier"):
            raise NotLive(f"host {name}: OMAPI cannot carry host-identifier")
        else:
            rest.append(stmt + ";")
    if mac is None:
        raise NotLive(f"host {name}: no hardware ethernet")
    return Host(name, mac, fixed, " ".join(rest))


@dataclass
class Delta:
    """Hosts to delete (by name) and to add; a changed host is both."""

    delete: list[str] = field(default_factory=list)
    add: list[Host] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.delete) + len(self.add)


def _lines(data: bytes) -> Counter[bytes]:
    return Counter(ln for ln in data.split(b"\n") if ln.startswith(b"host "))


def file_delta(old: bytes, new: bytes) -> tuple[list[bytes], list[bytes]]:
    """The host lines only in ``old`` and only in ``new`` (a multiset difference: order and
    untouched lines do not matter)."""
    a, b = _lines(old), _lines(new)
    return sorted((a - b).elements()), sorted((b - a).elements())


def delta(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> Delta:
    """The delta from the host files ``old`` (what dhcpd runs) to ``new`` (live), both by file
    name. Every removed or changed host is deleted by name, every new or changed host added;
    applied in that order, a MAC that moves to a new name is free again before its add
    (dhcpd keys hosts by name and by hardware address)."""
    removed: list[Host] = []
    added: list[Host] = []
    for name in sorted(set(old) | set(new)):
        if name not in HOST_FILES:
            raise NotLive(f"{name} is not a host file")
        gone, came = file_delta(old.get(name, b""), new.get(name, b""))
        removed.extend(parse(ln) for ln in gone)
        added.extend(parse(ln) for ln in came)
    _unique((h.name for h in added), "host name")
    _unique((h.mac for h in added), "hardware address")
    return Delta(sorted({h.name for h in removed}), sorted(added, key=lambda h: h.name))


def _unique(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise NotLive(f"{what} {v} added twice")
        seen.add(v)
