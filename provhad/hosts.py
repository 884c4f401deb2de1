"""dhcpd host entries and subclass members as OMAPI carries them, and the delta between two
sets of them (pure).

A host entry is what a ``host NAME { ... }`` block of modems-host.conf, endpoints-host.conf or
mta.conf holds, split the way a host object of dhcpd's OMAPI takes it: the name, the hardware
address, the fixed address, and the rest as one ``statements`` string. Statements are kept in
one canonical form (each stripped, ``;``-terminated, joined by one space), so that an entry
made from the model and one parsed from a rendered file compare equal exactly when the
rendered blocks mean the same to dhcpd.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from provhad.difference import changed_lines
from provhad.model import HA, Model

#: the files whose host blocks OMAPI carries (mta.conf only when it is included: provvoip)
HOST_FILES = ("modems-host.conf", "endpoints-host.conf", "mta.conf")
#: the files whose ``subclass "CLASS" MAC;`` lines OMAPI carries (one class per file)
SUBCLASS_FILES = ("blocked.conf", "modems-clients-public.conf")
#: every file a change confined to which goes to the running dhcpd by OMAPI
LIVE_FILES = HOST_FILES + SUBCLASS_FILES


class HostEntry(NamedTuple):
    """One dhcpd host. ``mac`` is None for a host identified otherwise (an endpoint by its
    modem's ``agent.remote-id``): OMAPI can delete such a host by name but cannot add it.
    A tuple: hundreds of thousands are made and compared per full delta, in C."""

    name: str
    mac: str | None
    statements: str
    fixed_address: str | None = None
    #: the ``host-identifier option agent.remote-id`` value of an endpoint without a MAC
    remote_id: str | None = None

    @property
    def omapi_addable(self) -> bool:
        return self.mac is not None


class Member(NamedTuple):
    """A ``subclass "CLASS" MAC;`` line: the MAC (lower case) is a member of the class (its
    hash string is the MAC's six bytes, what ``match pick-first-value (option agent.remote-id)``
    yields for a CPE behind that modem)."""

    cls: str
    mac: str

    def __str__(self) -> str:
        return f'subclass "{self.cls}" {self.mac}'


@dataclass(frozen=True)
class HostDelta:
    """What turns one host table (and subclass membership) into another: every delete before
    any add (a host changed in place, or a MAC that moved to another name, is a delete and
    then an add)."""

    delete: list[str] = field(default_factory=list)
    add: list[HostEntry] = field(default_factory=list)
    #: names to add that OMAPI cannot carry (no MAC): only a restart brings them in
    unsupported: list[str] = field(default_factory=list)
    #: subclass members to remove, then to add (after the hosts of each kind)
    leave: list[Member] = field(default_factory=list)
    join: list[Member] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.delete)
            + len(self.add)
            + len(self.unsupported)
            + len(self.leave)
            + len(self.join)
        )

    @property
    def empty(self) -> bool:
        return not len(self)


def statements(*parts: str) -> str:
    """``parts`` (statements without their ``;``) in the canonical form."""
    return " ".join(f"{p.strip()};" for p in parts if p.strip())


def modem_statements(hostname: str, has_mta: bool, provvoip: bool, ha: HA) -> str:
    """What templates/modems-host.conf.j2 puts in a modem's block besides its MAC."""
    parts = [f'filename "cm/{hostname}.cfg"', f'ddns-hostname "{hostname}"']
    if provvoip and has_mta:
        parts += [
            f"option ccc.dhcp-server-1 {ha.own_ip}",
            f"option ccc.SecondaryDHCPServer {ha.peer_ip}",
        ]
    return statements(*parts)


def mta_statements(mta_id: int) -> str:
    """What templates/mta.conf.j2 puts in an MTA's block besides its MAC."""
    return statements(
        f'filename "mta/mta-{mta_id}.cfg"',
        f'ddns-hostname "mta-{mta_id}"',
        f'option host-name "{mta_id}"',
    )


def host_entries(model: Model, provvoip: bool) -> dict[str, HostEntry]:
    """Every host of the model by name, as the built-in templates render it (MTAs only with
    ``provvoip``: dhcpd.conf includes mta.conf only then). The model keeps names unique."""
    ha = model.ha
    out: dict[str, HostEntry] = {}
    for m in model.modems:
        out[m.hostname] = HostEntry(
            m.hostname, m.mac, modem_statements(m.hostname, m.has_mta, provvoip, ha)
        )
    for e in model.endpoints:
        out[e.hostname] = HostEntry(e.hostname, e.mac, "", e.fixed_ip, e.remote_id)
    if provvoip:
        for t in model.mtas:
            name = f"mta-{t.id}"
            out[name] = HostEntry(name, t.mac, mta_statements(t.id))
    return out


def delta(old: Mapping[str, HostEntry], new: Mapping[str, HostEntry]) -> HostDelta:
    """The OMAPI steps from host table ``old`` to ``new``: deletes (sorted) then adds (sorted).

    A name whose entry differs in anything is deleted and added again (dhcpd cannot modify a
    host in place). All deletes come first, so a MAC that moves from one name to another is
    free again before its new host is added (dhcpd refuses a second host with the same MAC).
    """
    gone = sorted(name for name, entry in old.items() if new.get(name) != entry)
    come = sorted(name for name, entry in new.items() if old.get(name) != entry)
    add = [new[n] for n in come if new[n].omapi_addable]
    unsupported = [n for n in come if not new[n].omapi_addable]
    return HostDelta(delete=gone, add=add, unsupported=unsupported)


# --- reading rendered host files ----------------------------------------------------------------


class HostSyntaxError(ValueError):
    """A host block this module cannot split (names the file and line)."""


def split_statements(body: str) -> list[str]:
    """``body`` split at each ``;`` outside a quoted string (``\\`` escapes inside one),
    each stripped; an unterminated string or a trailing statement without ``;`` raises."""
    out: list[str] = []
    start, i, quoted = 0, 0, False
    while i < len(body):
        ch = body[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ";":
            out.append(body[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise HostSyntaxError("unterminated string")
    if body[start:].strip():
        raise HostSyntaxError(f"statement without ';': {body[start:].strip()!r}")
    return [s for s in out if s]


def parse_host_block(text: str) -> HostEntry:
    """One rendered ``host NAME { ... }`` line as an entry."""
    head, sep, rest = text.strip().partition("{")
    words = head.split()
    if not sep or len(words) != 2 or words[0] != "host" or not rest.rstrip().endswith("}"):
        raise HostSyntaxError(f"not a one-line host block: {text.strip()[:80]!r}")
    mac = fixed = remote = None
    kept: list[str] = []
    for stmt in split_statements(rest.rstrip()[:-1]):
        w = stmt.split()
        if w[:2] == ["hardware", "ethernet"] and len(w) == 3:
            mac = w[2]
        elif w[0] == "fixed-address" and len(w) == 2:
            fixed = w[1]
        elif w[:3] == ["host-identifier", "option", "agent.remote-id"] and len(w) == 4:
            remote = w[3]
        else:
            kept.append(stmt)
    return HostEntry(words[1], mac, statements(*kept), fixed, remote)


def parse_host_file(data: str, path: str = "<host file>") -> dict[str, HostEntry]:
    """Every host block of a rendered host file (one block per line, as our templates write
    them; blank and ``#`` lines skipped) by name; a name twice raises, naming both lines."""
    out: dict[str, HostEntry] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = parse_host_block(line)
        except HostSyntaxError as exc:
            raise HostSyntaxError(f"{path} line {number}: {exc}") from None
        if entry.name in out:
            raise HostSyntaxError(
                f"{path} line {number}: host {entry.name} already at line {lines[entry.name]}"
            )
        out[entry.name] = entry
        lines[entry.name] = number
    return out


def host_block(entry: HostEntry) -> str:
    """``entry`` as a one-line ``host`` block of a config file (the stub dhcpd -t reads)."""
    ident = (
        f"hardware ethernet {entry.mac};"
        if entry.mac is not None
        else f"host-identifier option agent.remote-id {entry.remote_id};"
    )
    fixed = f" fixed-address {entry.fixed_address};" if entry.fixed_address else ""
    stmts = f" {entry.statements}" if entry.statements else ""
    return f"host {entry.name} {{ {ident}{fixed}{stmts} }}\n"


_NAME = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]*")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def _outside_strings(text: str) -> str:
    """``text`` with every quoted string (escapes honoured) blanked to ``""``."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


# the canonical statements of our templates, without escapes: tokens split by one space,
# each statement ended by ';' and the next one after one space (the common case, in C)
_TOKEN = r'(?:[^\s";{}#\\]+|"[^"\\\n\r\0]*")'
_PLAIN_STATEMENTS = re.compile(rf"(?:{_TOKEN}(?: {_TOKEN})*;(?: {_TOKEN}(?: {_TOKEN})*;)*)?")


def shape_problem(entry: HostEntry) -> str | None:
    """Why ``entry`` cannot be sent as it is, judged on its shape alone; None when it can.

    dhcpd -t reads a host's statements inside a ``host { }`` block, OMAPI reads them on their
    own: a brace outside a string would end the block early and make the two readings differ,
    so it is refused here, before dhcpd ever sees it.
    """
    if not _NAME.fullmatch(entry.name):
        return f"host name {entry.name!r} is not a plain name"
    if entry.mac is not None and not _MAC.fullmatch(entry.mac):
        return f"hardware address {entry.mac!r} is not a MAC"
    if entry.remote_id is not None and not _MAC.fullmatch(entry.remote_id):
        return f"remote-id {entry.remote_id!r} is not a MAC"
    if entry.mac is None and entry.remote_id is None:
        return "neither a hardware address nor a remote-id"
    if entry.fixed_address is not None:
        try:
            ipaddress.IPv4Address(entry.fixed_address)
        except ValueError:
            return f"fixed address {entry.fixed_address!r} is not an IPv4 address"
    if _PLAIN_STATEMENTS.fullmatch(entry.statements):
        return None
    if any(c in entry.statements for c in "\n\r\0"):
        return "statements: a newline or NUL"
    try:
        parts = split_statements(entry.statements)
    except HostSyntaxError as exc:
        return f"statements: {exc}"
    if any(c in _outside_strings(p) for p in parts for c in "{}#"):
        return "statements: a brace or comment outside a string"
    if statements(*parts) != entry.statements:
        return "statements are not in canonical form"
    return None


def names_by_mac(entries: Iterable[HostEntry]) -> dict[str, list[str]]:
    """The names that share each MAC (case-folded), only for MACs under two names or more."""
    seen: dict[str, list[str]] = {}
    for e in entries:
        if e.mac is not None:
            seen.setdefault(e.mac.lower(), []).append(e.name)
    return {mac: names for mac, names in seen.items() if len(names) > 1}


#: per file name, the lines only in its old and only in its new version (multisets)
Differences = dict[str, tuple[Counter[bytes], Counter[bytes]]]


def line_differences(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> Differences:
    """The lines each file (by name) has only in ``old`` and only in ``new``, found at memory
    speed where both versions agree (:func:`provhad.difference.changed_lines`), once per file:
    :func:`changed_entries` and :func:`changed_members` take their lines from the same pass."""
    return {
        name: changed_lines(old.get(name, b""), new.get(name, b""))
        for name in sorted(set(old) | set(new))
    }


def _of_kind(
    found: tuple[Counter[bytes], Counter[bytes]], kind: bytes
) -> tuple[Counter[bytes], Counter[bytes]]:
    """The lines of one file's differences that start with ``kind``."""
    a, b = found
    return (
        Counter({ln: n for ln, n in a.items() if ln.startswith(kind)}),
        Counter({ln: n for ln, n in b.items() if ln.startswith(kind)}),
    )


def file_delta(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> HostDelta:
    """The OMAPI steps from the files ``old`` (by name: what dhcpd holds) to ``new`` (live),
    from :func:`changed_entries` and :func:`changed_members`."""
    diffs = line_differences(old, new)
    hosts = delta(*changed_entries(old, new, diffs))
    leave, join = changed_members(old, new, diffs)
    return HostDelta(hosts.delete, hosts.add, hosts.unsupported, leave, join)


def changed_entries(
    old: Mapping[str, bytes], new: Mapping[str, bytes], diffs: Differences | None = None
) -> tuple[dict[str, HostEntry], dict[str, HostEntry]]:
    """The host entries only in ``old`` and only in ``new`` (host files by name). Only the
    lines that differ (a multiset difference: one host per line, as the templates write them)
    are parsed, so the cost follows the change, not the table. ``diffs``: the files'
    :func:`line_differences`, when the caller has them. HostSyntaxError when a changed line
    is not a one-line host block (an operator's template that spans lines)."""
    gone: dict[str, HostEntry] = {}
    came: dict[str, HostEntry] = {}
    for name, found in (line_differences(old, new) if diffs is None else diffs).items():
        only_old, only_new = _of_kind(found, b"host ")
        for lines, into in ((only_old, gone), (only_new, came)):
            for line in lines.elements():
                entry = parse_host_block(line.decode("utf-8"))
                if entry.name in into:
                    raise HostSyntaxError(f"{name}: host {entry.name} twice")
                into[entry.name] = entry
    return gone, came


# --- reading rendered subclass files ------------------------------------------------------------

# as templates/blocked.conf.j2 and modems-clients-public.conf.j2 write them, comment included
_SUBCLASS_LINE = re.compile(
    rb'subclass "([A-Za-z0-9_.-]+)" ([0-9a-f]{2}(?::[0-9a-f]{2}){5});(?:[ \t]*#[^\n]*)?'
)
_SUBCLASS_AT_LINE = re.compile(rb"(?m)^" + _SUBCLASS_LINE.pattern)
#: above this many members to look up in one file, the file is read whole once instead
_SCAN_MAX = 16


def parse_subclass_line(line: bytes) -> Member:
    """One rendered ``subclass "CLASS" MAC; # comment`` line as a member."""
    found = _SUBCLASS_LINE.fullmatch(line.strip())
    if found is None:
        raise HostSyntaxError(f"not a one-line subclass of a MAC: {line.strip()[:80]!r}")
    return Member(found[1].decode(), found[2].decode())


def _members_in(data: bytes, wanted: set[Member]) -> set[Member]:
    """Which of ``wanted`` have a line in ``data``: a search per member while few (the
    common case costs a scan in C), else one pass over the whole file."""
    if len(wanted) > _SCAN_MAX:
        every = {Member(c.decode(), m.decode()) for c, m in _SUBCLASS_AT_LINE.findall(data)}
        return wanted & every
    found = set()
    for m in wanted:
        needle = f"{m};".encode()
        if data.startswith(needle) or b"\n" + needle in data:
            found.add(m)
    return found


def changed_members(
    old: Mapping[str, bytes], new: Mapping[str, bytes], diffs: Differences | None = None
) -> tuple[list[Member], list[Member]]:
    """The subclass members to remove and to add (each sorted) from the files ``old`` to
    ``new`` (by name). Only the lines that differ are parsed; a member whose line changed
    only in its comment (another modem id), or that another line of the same file still (or
    already) holds (two modems with one MAC), needs nothing. Each class lives in one file,
    as the templates write them. ``diffs``: as for :func:`changed_entries`. HostSyntaxError
    for a changed line that is not a one-line ``subclass`` of a lower-case MAC."""
    leave: set[Member] = set()
    join: set[Member] = set()
    for name, found in (line_differences(old, new) if diffs is None else diffs).items():
        before, after = old.get(name, b""), new.get(name, b"")
        only_old, only_new = _of_kind(found, b"subclass ")
        gone = {parse_subclass_line(ln) for ln in only_old}
        came = {parse_subclass_line(ln) for ln in only_new}
        # a member with a line left in the other version was never (or is still) out
        leave |= (gone - came) - _members_in(after, gone - came)
        join |= (came - gone) - _members_in(before, came - gone)
    return sorted(leave), sorted(join)
