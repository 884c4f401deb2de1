"""Snapshot -> model: typed, validated rows. Pure: no I/O.

Every value that reaches a generated file passes through here. Typed values (IPs, MACs,
DNS labels) are validated and normalised; a row that fails is left out and reported as a
:class:`Reject` naming table, id and reason, and the other rows still go through. Values of
the singleton configuration rows (``provha``, ``provbase``) that the whole set depends on
raise :class:`ModelError` instead, because no partial set can be right without them; a
value of theirs that can be replaced safely (a rebuild interval below
:data:`MIN_REBUILD_INTERVAL`) is replaced and reported as a :class:`Reject`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import ipaddress
import marshal
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

from provhad.snapshot import (
    ENDPOINT_COLUMNS,
    MODEM_COLUMNS,
    MTA_COLUMNS,
    PackedRows,
    Packer,
    Row,
    Snapshot,
    Table,
    tuples,
)

T = TypeVar("T")

POOL_TYPES = ("CM", "CPEPub", "CPEPriv", "MTA")

#: A host declaration's name as dhcpd 4.4 reads it (parse_host_name): dot-separated tokens of
#: its lexer's name characters, none starting with '_'; dhcpd takes no quoted string here.
#: Wider than upstream's GUI rule (Endpoint.php:46, ``^(?!cm-)(?!mta-)[0-9A-Za-z\-]+$``), so
#: whatever that rule lets the master write, the slave writes too, byte for byte.
_HOST_NAME_RE = re.compile(r"^[0-9A-Za-z-][0-9A-Za-z_-]*(?:\.[0-9A-Za-z-][0-9A-Za-z_-]*)*$")

_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MAC_HEX_RE = re.compile(r"^[0-9a-f]{12}$")
_MAC_CANON = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_MAC_SEP_RE = re.compile(r"[:\-.]")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: an IPv4 address exactly as str(ipaddress.IPv4Address) writes it (no leading zeros)
_IPV4_CANON = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# hmac-md5 secrets as ddns-confgen/dnssec-keygen print them: base64.
_SECRET_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class ModelError(Exception):
    """The snapshot cannot produce any correct set (e.g. no usable provbase row)."""


@dataclass(frozen=True, order=True)
class Reject:
    """A row (or part of one) left out of the set, and why."""

    table: str
    id: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.table} id {self.id}: {self.reason}"


@dataclass(frozen=True)
class HA:
    """This node's view of the HA pair (own = this node, peer = the other)."""

    role: str
    own_ip: str
    peer_ip: str
    own_dns_password: str
    peer_dns_password: str
    rebuild_interval: int
    #: failover split (0..256) from provha.load_ratio_master; only the primary declares it
    split: int = 128


@dataclass(frozen=True)
class Base:
    """The provbase row: global provisioning settings."""

    provisioning_server: str
    domain_name: str
    default_lease_time: int
    max_lease_time: int
    multiple_provisioning_systems: bool
    default_network: ipaddress.IPv4Network
    #: CPEs per modem (class lease limit): provbase.max_cpe, or 4 when it is NULL or 0
    lease_limit: int = 4


@dataclass(frozen=True)
class Pool:
    """An IPv4 pool of a CMTS."""

    id: int
    netgw_id: int
    #: one of POOL_TYPES, or '' (NULL, or a value MariaDB's ENUM did not take): no allow/deny
    type: str
    network: ipaddress.IPv4Network
    #: each ``range`` statement's addresses (one or two, as upstream writes them); empty when
    #: every address is a fixed endpoint: the subnet is kept without a pool
    ranges: tuple[tuple[str, ...], ...]
    router: str
    broadcast: str | None
    dns: tuple[str, ...]
    optional: str | None
    active: bool
    #: ippool.updated_at as the database gave it (decides which of two overlapping pools goes)
    updated_at: str = ""

    @property
    def netmask(self) -> str:
        return str(self.network.netmask)


@dataclass(frozen=True)
class NetGw:
    """A CMTS-type network gateway and its IPv4 pools."""

    id: int
    hostname: str
    pools: tuple[Pool, ...]


# The per-row classes are NamedTuples: hundreds of thousands are made per rebuild, and a
# tuple is made in a third of the time of a frozen dataclass and is as immutable.


class Modem(NamedTuple):
    id: int
    hostname: str
    mac: str
    has_mta: bool


class Mta(NamedTuple):
    id: int
    mac: str


class Endpoint(NamedTuple):
    id: int
    hostname: str
    mac: str | None
    remote_id: str | None
    fixed_ip: str | None


class ModemRef(NamedTuple):
    """A modem listed by MAC only (public and blocked subclasses)."""

    id: int
    mac: str


@dataclass(frozen=True)
class Model:
    """Everything the renderer needs, validated."""

    ha: HA
    base: Base
    mta_domain: str | None
    netgws: tuple[NetGw, ...]
    # the two big ones are kept packed (snapshot.PackedRows) and made into Modem / Mta
    # tuples as they are iterated: at 500k modems that is 150 MB less at the peak
    modems: Sequence[Modem]
    public_modems: tuple[ModemRef, ...]
    blocked_modems: tuple[ModemRef, ...]
    mtas: Sequence[Mta]
    endpoints: tuple[Endpoint, ...]
    rejects: tuple[Reject, ...] = ()
    skipped: tuple[Reject, ...] = ()

    @property
    def pools(self) -> list[Pool]:
        return [p for gw in self.netgws for p in gw.pools]

    def counts(self) -> dict[str, int]:
        return {
            "cmts": len(self.netgws),
            "pools": len(self.pools),
            "modems": len(self.modems),
            "mtas": len(self.mtas),
            "endpoints": len(self.endpoints),
            "public": len(self.public_modems),
            "blocked": len(self.blocked_modems),
            "rejected": len(self.rejects),
            "skipped": len(self.skipped),
        }


# --- value checks ---------------------------------------------------------------------------


class BadValue(ValueError):
    """A column value that fails its field's check."""


def blank(value: Any) -> bool:
    """NULL and '' are the same in NMS Prime (it converted '' to NULL in 2019)."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def ipv4(value: Any, column: str) -> str:
    """A dotted-quad IPv4 address, normalised."""
    if value.__class__ is str and _IPV4_CANON.fullmatch(value):
        return value  # already as ipaddress writes it (hot path: fixed endpoints, pools)
    if not isinstance(value, str) or not value.strip(" ").isascii():
        raise BadValue(f"{column} {value!r} is not an IPv4 address")
    try:
        return str(ipaddress.IPv4Address(value.strip(" ")))
    except ValueError:
        raise BadValue(f"{column} {value!r} is not an IPv4 address") from None


def mac(value: Any, column: str = "mac") -> str:
    """A MAC in lower-case colon form; accepts ':', '-' or Cisco '.' separators."""
    if isinstance(value, str) and _MAC_CANON.fullmatch(value):
        return value  # the form NMS Prime stores: nothing to normalise (hot path)
    if not isinstance(value, str):
        raise BadValue(f"{column} {value!r} is not a MAC address")
    raw = value.strip(" ").lower()
    parts = _MAC_SEP_RE.split(raw)
    if len(parts) == 6 and all(len(p) in (1, 2) for p in parts):
        raw = "".join(p.zfill(2) for p in parts)
    elif len(parts) == 3 and all(len(p) == 4 for p in parts):
        raw = "".join(parts)
    if not _MAC_HEX_RE.fullmatch(raw):
        raise BadValue(f"{column} {value!r} is not a MAC address")
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def reserved_mac(value: Any) -> bool:
    """NULL, '' and ff:* MACs are skipped, as upstream does (RFC 7042 reserved; Modem.php:488
    at 3.1.0). A MAC of only whitespace is not empty: it is a bad MAC, reported by mac()."""
    if value is None or value == "":
        return True
    text = str(value).strip()
    return bool(text) and text[:2] in ("ff", "FF", "fF", "Ff")


def label(value: Any, column: str) -> str:
    """A single DNS label (host names in dhcpd host declarations)."""
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise BadValue(f"{column} {value!r} is not a valid DNS label")
    return value


def host_name(value: Any, column: str) -> str:
    """A name for a dhcpd host declaration, written as is (see _HOST_NAME_RE)."""
    if not isinstance(value, str) or not _HOST_NAME_RE.fullmatch(value):
        raise BadValue(f"{column} {value!r} is not a name dhcpd takes for a host declaration")
    return value


def domain(value: Any, column: str) -> str:
    """A DNS domain name of one or more labels, without the trailing dot."""
    if not isinstance(value, str):
        raise BadValue(f"{column} {value!r} is not a domain name")
    name = value.strip(" ").rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(p) for p in name.split(".")):
        raise BadValue(f"{column} {value!r} is not a domain name")
    return name


def netmask(value: Any, column: str = "netmask") -> int:
    """A dotted netmask or '/NN' (both accepted by the NMS Prime GUI) as a prefix length."""
    if not isinstance(value, str) or blank(value):
        raise BadValue(f"{column} {value!r} is not a netmask")
    text = value.strip(" ")
    digits = text[1:]
    if text.startswith("/") and digits.isascii() and digits.isdigit() and int(digits) <= 32:
        return int(digits)
    try:
        if text.count(".") != 3:
            raise ValueError(text)
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        raise BadValue(f"{column} {value!r} is not a netmask") from None


def integer(value: Any, column: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadValue(f"{column} {value!r} is not an integer >= {minimum}")
    return value


def secret(value: Any, column: str) -> str:
    """An hmac-md5 secret (base64); it ends up in key files and a shell script."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        if not _SECRET_RE.fullmatch(text) or not base64.b64decode(text, validate=True):
            raise ValueError(text)
    except (ValueError, binascii.Error):
        raise BadValue(f"{column} is not a base64 secret") from None
    return text


# Outside strings and comments dhcpd statements use only these characters.
_OPTIONAL_CHARS = re.compile(r"[A-Za-z0-9_\-.:,;{}()=!~&|+*/%\s]")
# A name as dhcpd's lexer reads it (a superset: never splits a name that dhcpd keeps whole).
_OPTIONAL_WORD = re.compile(r"[A-Za-z0-9_-]+")
# Words that run a program or read or write a file (dhcpd.conf(5), dhcp-eval(5)); dhcpd's
# keywords ignore case. Checked anywhere outside strings and comments, not just where a
# statement starts: execute() is documented as an expression too.
_OPTIONAL_FORBIDDEN = {
    "include": "reads any file",
    "execute": "runs a program as the dhcpd user",
    "lease-file-name": "names a file dhcpd writes",
    "pid-file-name": "names a file dhcpd writes",
    "dhcpv6-lease-file-name": "names a file dhcpd writes",
    "dhcpv6-pid-file-name": "names a file dhcpd writes",
}


def check_optional(text: str) -> str:
    """Raw dhcpd statements of a pool, checked so they stay inside their subnet block.

    They are directives by design, so only their shape is checked: balanced braces,
    terminated one-line strings, dhcpd's character set outside strings, and none of the
    words that run a program or touch a file (``include``, ``execute``, the file-name
    statements), whatever their case and wherever they stand.
    """
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] in "\r\n":
                    raise BadValue("optional has a string that spans lines")
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                raise BadValue("optional has an unterminated string")
        elif not _OPTIONAL_CHARS.match(c) or c in "\x0b\x0c\x1c\x1d\x1e\x85\xa0":
            raise BadValue(f"optional has a character dhcpd does not use here: {c!r}")
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                raise BadValue("optional closes a block it did not open")
        elif (word := _OPTIONAL_WORD.match(text, i)) is not None:
            why = _OPTIONAL_FORBIDDEN.get(word.group(0).lower())
            if why is not None:
                raise BadValue(f"optional may not use {word.group(0).lower()} ({why})")
            i = word.end()
            continue
        i += 1
    if depth:
        raise BadValue("optional leaves a block open")
    return text


# --- the rows -----------------------------------------------------------------------------


def _first(rows: Sequence[Row], table: str) -> Row:
    if not rows:
        raise ModelError(f"table {table} has no usable row")
    return min(rows, key=lambda r: r["id"])


#: provha.slave_config_rebuild_interval below this many seconds is raised to it: 0 would
#: mean a full rebuild of every row every second
MIN_REBUILD_INTERVAL = 60
#: upstream's column default, used for a NULL or non-integer value
DEFAULT_REBUILD_INTERVAL = 3600


def rebuild_interval(row: Row) -> tuple[int, str | None]:
    """The periodic rebuild interval of a provha row, and why it differs from the column
    (None if it does not)."""
    value = row.get("slave_config_rebuild_interval")
    if isinstance(value, bool) or not isinstance(value, int):
        return DEFAULT_REBUILD_INTERVAL, (
            f"slave_config_rebuild_interval {value!r} is not an integer; "
            f"upstream's default {DEFAULT_REBUILD_INTERVAL} s used"
        )
    if value < MIN_REBUILD_INTERVAL:
        return MIN_REBUILD_INTERVAL, (
            f"slave_config_rebuild_interval {value} is below the minimum of "
            f"{MIN_REBUILD_INTERVAL} s; {MIN_REBUILD_INTERVAL} s used"
        )
    return value, None


def build_ha(row: Row, role: str, rejects: list[Reject] | None = None) -> HA:
    """Own and peer from the provha row, as upstream's setProvhaProperties().

    A rebuild interval that had to be replaced (see :func:`rebuild_interval`) is reported in
    ``rejects`` as suspicious; the row itself is used.
    """
    try:
        master = ipv4(row.get("master"), "master")
        slaves = str(row.get("slaves") or "")
        first_slave = slaves.split(",")[0].strip()
        slave = ipv4(first_slave, "slaves")
        master_pw = secret(row.get("master_dns_password"), "master_dns_password")
        slave_pw = secret(row.get("slave_dns_password"), "slave_dns_password")
        ratio = row.get("load_ratio_master", 0.5)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise BadValue(f"load_ratio_master {ratio!r} is not between 0 and 1")
    except BadValue as exc:
        raise ModelError(f"provha id {row.get('id')}: {exc}") from None
    interval, suspicious = rebuild_interval(row)
    if suspicious is not None and rejects is not None:
        rejects.append(Reject("provha", row.get("id"), suspicious))
    split = round(float(ratio) * 256)
    if role == "master":
        return HA(role, master, slave, master_pw, slave_pw, interval, split)
    return HA(role, slave, master, slave_pw, master_pw, interval, split)


#: upstream's lease limit when provbase.max_cpe is NULL or 0 (ProvBase.php:247 at 3.1.0)
DEFAULT_LEASE_LIMIT = 4


def lease_limit(row: Row) -> tuple[int, str | None]:
    """The class lease limit of a provbase row (``max_cpe ?: 4``), and why it differs from the
    column (None if it does not or the column is NULL/0, as upstream)."""
    value = row.get("max_cpe")
    if value is None or value == 0 or value == "":
        return DEFAULT_LEASE_LIMIT, None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return DEFAULT_LEASE_LIMIT, f"max_cpe {value!r} is not a positive integer; 4 used"
    return value, None


def build_base(row: Row, prefix: int, rejects: list[Reject] | None = None) -> Base:
    limit, suspicious = lease_limit(row)
    if suspicious is not None and rejects is not None:
        rejects.append(Reject("provbase", row.get("id"), suspicious))
    try:
        server = ipv4(row.get("provisioning_server"), "provisioning_server")
        dom = domain(row.get("domain_name"), "domain_name")
        default_lease = integer(row.get("dhcp_def_lease_time"), "dhcp_def_lease_time", 1)
        max_lease = integer(row.get("dhcp_max_lease_time"), "dhcp_max_lease_time", 1)
    except BadValue as exc:
        raise ModelError(f"provbase id {row.get('id')}: {exc}") from None
    network = ipaddress.IPv4Network(f"{server}/{prefix}", strict=False)
    return Base(
        server,
        dom,
        default_lease,
        max_lease,
        bool(row.get("multiple_provisioning_systems")),
        network,
        limit,
    )


def cut_ranges(start: int, end: int, holes: Iterable[int]) -> list[tuple[int, int]]:
    """[start, end] without the addresses in ``holes`` (sorted), as compact sub-ranges."""
    out = []
    cur = start
    for h in sorted(set(h for h in holes if start <= h <= end)):
        if h > cur:
            out.append((cur, h - 1))
        cur = h + 1
    if cur <= end:
        out.append((cur, end))
    return out


def build_pool(row: Row, fixed_ips: Sequence[int], notes: list[str] | None = None) -> Pool:
    """One ippool row, or BadValue.

    Rows the master's generator writes and its dhcpd accepts are kept as the master writes
    them, so both failover peers declare the same pools; what is odd about them is appended
    to ``notes`` (reported as suspicious). See docs/files.md, "Pools".
    """
    notes = notes if notes is not None else []
    ptype = row.get("type")
    if ptype not in POOL_TYPES:
        # NetGw.php:597-626 (3.1.0): a type outside the switch gets no allow/deny lines; the
        # type is never written, so any value is harmless
        notes.append(
            f"type {ptype!r} is none of {', '.join(POOL_TYPES)}: pool served "
            "without allow/deny lines, as upstream"
        )
        ptype = ""
    net_ip = ipv4(row.get("net"), "net")
    prefix = netmask(row.get("netmask"))
    try:
        network = ipaddress.IPv4Network(f"{net_ip}/{prefix}")
    except ValueError:
        raise BadValue(f"net {net_ip} is not the network address of a /{prefix} subnet") from None
    start = ipaddress.IPv4Address(ipv4(row.get("ip_pool_start"), "ip_pool_start"))
    end = ipaddress.IPv4Address(ipv4(row.get("ip_pool_end"), "ip_pool_end"))
    if start not in network or end not in network:
        raise BadValue(f"range {start}-{end} is outside subnet {network}")
    if start > end:
        # dhcpd swaps the two; upstream writes them as stored (IpPool.php:215)
        notes.append(f"range start {start} is after end {end}: served as written, as upstream")
    router = ipv4(row.get("router_ip"), "router_ip")
    broadcast = (
        None if blank(row.get("broadcast_ip")) else ipv4(row["broadcast_ip"], "broadcast_ip")
    )
    dns = tuple(ipv4(row[c], c) for c in ("dns1_ip", "dns2_ip", "dns3_ip") if not blank(row.get(c)))
    whole = ((str(start), str(end)),)
    ranges: tuple[tuple[str, ...], ...] = whole
    if ptype == "CPEPub":
        # IpPool.php:213-274 (3.1.0): the fixed endpoints inside start..end are cut out; a
        # one-address piece is written as `range a;`, a pool without holes as `range s e;`
        lo, hi = int(start), int(end)
        at = bisect.bisect_left(fixed_ips, lo)  # fixed_ips is sorted (_build_netgws)
        if at < len(fixed_ips) and fixed_ips[at] <= hi:
            ranges = tuple(
                (str(ipaddress.IPv4Address(a)),)
                if a == b
                else (str(ipaddress.IPv4Address(a)), str(ipaddress.IPv4Address(b)))
                for a, b in cut_ranges(int(start), int(end), fixed_ips)
            )
        if not ranges:
            notes.append(
                f"every address of {start}-{end} is a fixed IP of an endpoint: subnet kept "
                "without a pool (upstream writes a pool without a range, which dhcpd refuses)"
            )
    optional = row.get("optional")
    # One line ending, as dhcpd knows it: the GUI's textarea sends CRLF, and a lone CR is a
    # line break to editors and to Python but not to dhcpd (`#\r"` is a comment to dhcpd, a
    # comment and a quote to a person reading the file).
    optional = None if blank(optional) else str(optional).replace("\r\n", "\n").replace("\r", "\n")
    updated = row.get("updated_at")
    return Pool(
        id=int(row["id"]),
        netgw_id=int(row["netgw_id"]),
        type=ptype,
        network=network,
        ranges=ranges,
        router=router,
        broadcast=broadcast,
        dns=dns,
        optional=optional,
        active=bool(row.get("active", 1)),
        updated_at="" if updated is None else str(updated),
    )


def _span(pool: Pool) -> tuple[int, int] | None:
    """The lowest and highest address a pool declares (None: it declares none)."""
    addrs = [int(ipaddress.IPv4Address(a)) for r in pool.ranges for a in r]
    return (min(addrs), max(addrs)) if addrs else None


def ha_dns(dns: tuple[str, ...], ha: HA) -> tuple[str, ...]:
    """A pool's DNS list as the slave serves it: the provisioning addresses of the pair (own or
    peer) become own-then-peer at the place of the first of them; other servers stay."""
    pair = (ha.own_ip, ha.peer_ip)
    if not any(d in pair for d in dns):
        return dns
    out: list[str] = []
    for d in dns:
        for x in pair if d in pair else (d,):
            if x not in out:
                out.append(x)
    return tuple(out)


def _build_netgws(
    snap: Snapshot,
    ha: HA,
    rejects: list[Reject],
    dropped_optional: Mapping[int, str],
    dropped_pools: Mapping[int, str],
) -> tuple[NetGw, ...]:
    fixed: list[int] = []
    for ip in snap.fixed_ips:
        with contextlib.suppress(ValueError):  # reported with the endpoint row itself
            text = str(ip).strip()
            if _IPV4_CANON.fullmatch(text):
                fixed.append(int.from_bytes(socket.inet_aton(text)))
            else:
                fixed.append(int(ipaddress.IPv4Address(text)))
    fixed.sort()
    gw_ids = {int(r["id"]) for r in snap.netgw}
    built: list[Pool] = []
    for row in sorted(snap.ippool, key=lambda r: r["id"]):
        if row.get("netgw_id") not in gw_ids:
            continue
        if row["id"] in dropped_pools:
            rejects.append(Reject("ippool", row["id"], dropped_pools[row["id"]]))
            continue
        notes: list[str] = []
        try:
            pool = build_pool(row, fixed, notes)
        except BadValue as exc:
            rejects.append(Reject("ippool", row.get("id"), str(exc)))
            continue
        rejects.extend(Reject("ippool", pool.id, n) for n in notes)
        if pool.optional is not None:
            try:
                check_optional(pool.optional)
                if pool.id in dropped_optional:
                    raise BadValue(dropped_optional[pool.id])
            except BadValue as exc:
                rejects.append(
                    Reject("ippool", pool.id, f"{exc}; pool rendered without its optional")
                )
                pool = replace(pool, optional=None)
        if ha.role == "slave" and pool.dns != (dns := ha_dns(pool.dns, ha)):
            pool = replace(pool, dns=dns)
        built.append(pool)
    # dhcpd refuses a set in which two pools declare the same address, and so the master's
    # dhcpd keeps the set it had before the change that made them overlap: of two overlapping
    # pools the one changed last (updated_at, then the higher id) is left out.
    taken: list[tuple[int, int, int]] = []  # (first, last, pool id) of the pools kept
    kept: set[int] = set()
    for pool in sorted(built, key=lambda p: (p.updated_at, p.id)):
        span = _span(pool)
        if span is not None:
            a, b = span
            clash = next((pid for (x, y, pid) in taken if a <= y and x <= b), None)
            if clash is not None:
                rejects.append(
                    Reject(
                        "ippool",
                        pool.id,
                        f"range overlaps ippool id {clash}, changed before this one; left out",
                    )
                )
                continue
            taken.append((a, b, pool.id))
        kept.add(pool.id)
    pools_by_gw: dict[int, list[Pool]] = {}
    for pool in built:
        if pool.id in kept:
            pools_by_gw.setdefault(pool.netgw_id, []).append(pool)
    out = []
    for row in snap.netgw:  # upstream keeps the database order here
        gid = int(row["id"])
        name = row.get("hostname")
        if not blank(name) and "\x00" in str(name):
            # dhcpd's strings end at a NUL, even an escaped one: "\000" is a zero-length name
            rejects.append(Reject("netgw", gid, "hostname holds a NUL; netgw-<id> used"))
            name = None
        if blank(name):
            name = f"netgw-{gid}"
        out.append(NetGw(gid, str(name), tuple(pools_by_gw.get(gid, ()))))
    return tuple(out)


@dataclass(frozen=True)
class Part:
    """A run of one big table's rows (a chunk of ids, as read), modelled: everything
    :func:`build` takes from it. A pure function of the rows (and, for modems, of which ids
    own an MTA), so an unchanged chunk's part is taken from a :class:`PartCache`."""

    #: the model's plain tuples (Modem or Mta fields), marshalled as snapshot.PackedRows keeps them
    blobs: tuple[bytes, ...]
    #: the first and the last id of each blob
    spans: tuple[tuple[int, int], ...]
    count: int
    #: hash() of each host name it declares (one namespace across modems, endpoints and MTAs):
    #: a tenth of the memory of the names at 500k modems; two names with one hash are taken
    #: for a clash, which only costs a build in one go
    names: tuple[int, ...]
    public: tuple[ModemRef, ...] = ()
    blocked: tuple[ModemRef, ...] = ()
    rejects: tuple[Reject, ...] = ()
    skipped: tuple[Reject, ...] = ()
    #: modems: the lowest and highest id of its rows, and the MTA owners among those ids
    #: when it was modelled (its lines say whether a modem owns an MTA)
    rows_span: tuple[int, int] | None = None
    owners_seen: tuple[int, ...] = ()
    #: MTAs: the modem ids that own one (upstream counts every MTA row, see _mta_owners)
    owners: frozenset[int] = frozenset()
    #: endpoints (few, kept as they are)
    endpoints: tuple[Endpoint, ...] = ()


#: a part's key: its table and its chunk's packed rows
PartKey = tuple[str, bytes]


@dataclass
class PartCache:
    """The :class:`Part` of each chunk of the last build, keyed by the chunk's packed rows
    (content, not identity): a chunk the database read did not change is not modelled again.
    Only the parts of the last build are kept; so is the last build's CMTS and pool part."""

    parts: dict[PartKey, Part] = field(default_factory=dict)
    #: parts modelled afresh and parts in all, by the last build
    last: tuple[int, int] = (0, 0)
    #: the hashes of the host names the parts in ``indexed`` declare (each by one of them)
    names: set[int] = field(default_factory=set)
    indexed: set[PartKey] = field(default_factory=set)
    #: the MTA parts of the last build and the MTA owners they make, sorted
    owners: tuple[tuple[bytes, ...], list[int]] = ((), [])
    #: the inputs of the last build's CMTSs and pools, and what was made of them
    netgws: tuple[str, tuple[NetGw, ...], tuple[Reject, ...]] | None = None

    def declare(self, parts: Mapping[PartKey, Part]) -> bool:
        """Whether no host name is declared by two of ``parts``. O(parts that changed since
        the last call): the index follows the parts that went and came."""
        index = self.names
        for key in self.indexed - parts.keys():
            index.difference_update(self.parts[key].names)
        for key in parts.keys() - self.indexed:
            names = parts[key].names
            if not index.isdisjoint(names):
                self.names, self.indexed = set(), set()  # built again from scratch next time
                return False
            index.update(names)
        self.indexed = set(parts)
        return True

    def sorted_owners(self, mta_keys: tuple[bytes, ...], parts: Sequence[Part]) -> list[int]:
        """The MTA owners of ``parts`` (the MTA parts, by key), sorted; the last build's when
        its MTA parts were the same."""
        if self.owners[0] != mta_keys:
            self.owners = (mta_keys, sorted(frozenset().union(*(p.owners for p in parts))))
        return self.owners[1]


def _same_owners(part: Part, owners: list[int]) -> bool:
    return _owners_within(owners, part.rows_span) == part.owners_seen


def _owners_within(owners: list[int], span: tuple[int, int] | None) -> tuple[int, ...]:
    if span is None:
        return ()
    lo, hi = span
    return tuple(owners[bisect.bisect_left(owners, lo) : bisect.bisect_right(owners, hi)])


def _taken(hosts: Mapping[str, int | tuple[str, int]], name: str) -> str:
    owner = hosts[name]
    table, row_id = ("modem", owner) if isinstance(owner, int) else owner
    return f"host name {name!r} is already used by {table} id {row_id}"


def _mta_owners(rows: Iterable[tuple[Any, ...]]) -> frozenset[int]:
    """The modems that own an MTA: every MTA row but those with an ff:* MAC, a NULL MAC
    included (as upstream counts, Modem.php:492)."""
    out: set[int] = set()
    for _tid, owner, raw in rows:
        if not (isinstance(raw, str) and raw.lower().startswith("ff:")):
            out.add(owner or 0)
    return frozenset(out)


def _modem_part(
    rows: Iterable[tuple[Any, ...]],
    mta_owner: frozenset[int],
    hosts: dict[str, int | tuple[str, int]],
    dropped_rows: Mapping[tuple[str, int], str],
) -> Part:
    """Modem rows (MODEM_COLUMNS) -> their part; names go into ``hosts`` (first one wins)."""
    rejects: list[Reject] = []
    skipped: list[Reject] = []
    canonical, a_label = _MAC_CANON.fullmatch, _LABEL_RE.fullmatch
    modems: Packer[Modem] = Packer(Modem._make, spans=True)
    public: list[ModemRef] = []
    blocked: list[ModemRef] = []
    # Inline rather than method calls, and no object of its own per modem: this runs once
    # per row, hundreds of thousands of times.
    for mid, hostname, raw, is_public, access in rows:
        mid = int(mid)  # id 0 too: 3.1.0's chunked make_dhcp_cm_all (Modem.php:549) has no skip
        if dropped_rows and (reason := dropped_rows.get(("modem", mid))) is not None:
            rejects.append(Reject("modem", mid, reason))
            continue
        if access is not None and not access and raw is not None and raw != "":
            try:
                blocked.append(ModemRef(mid, mac(raw)))
            except BadValue as exc:
                rejects.append(Reject("modem", mid, f"{exc}; not blocked"))
        try:
            if raw.__class__ is str and canonical(raw) and raw[:2] != "ff":
                cm_mac = raw  # the form NMS Prime stores (hot path)
            elif reserved_mac(raw):
                skipped.append(Reject("modem", mid, f"mac {raw!r} is empty or reserved (ff:*)"))
                continue
            else:
                cm_mac = mac(raw)
            name = hostname if hostname.__class__ is str and a_label(hostname) else ""
            if not name:
                name = label(hostname, "hostname")
            key = name
            if key in hosts:
                raise BadValue(_taken(hosts, name))
        except BadValue as exc:
            rejects.append(Reject("modem", mid, str(exc)))
            continue
        hosts[key] = mid
        modems.append((mid, name, cm_mac, mid in mta_owner))
        if is_public:
            public.append(ModemRef(mid, cm_mac))
    packed = modems.done()
    return Part(
        packed.blobs,
        packed.spans or (),
        len(packed),
        tuple(map(hash, hosts)),  # modems come first in the namespace: these are all theirs
        tuple(public),
        tuple(blocked),
        tuple(rejects),
        tuple(skipped),
    )


def _mta_part(
    rows: Sequence[tuple[Any, ...]],
    hosts: dict[str, int | tuple[str, int]],
    dropped_rows: Mapping[tuple[str, int], str],
) -> Part:
    """MTA rows (MTA_COLUMNS) -> their part; names go into ``hosts`` (first one wins)."""
    rejects: list[Reject] = []
    skipped: list[Reject] = []
    mtas: Packer[Mta] = Packer(Mta._make, spans=True)
    names: list[int] = []
    for tid, _owner, raw in rows:
        tid = int(tid)
        if dropped_rows and (reason := dropped_rows.get(("mta", tid))) is not None:
            rejects.append(Reject("mta", tid, reason))
            continue
        if reserved_mac(raw):
            skipped.append(Reject("mta", tid, f"mac {raw!r} is empty or reserved (ff:*)"))
            continue
        try:
            mta_mac = mac(raw)
            name = f"mta-{tid}"
            key = name
            if key in hosts:
                raise BadValue(_taken(hosts, name))
        except BadValue as exc:
            rejects.append(Reject("mta", tid, str(exc)))
            continue
        hosts[key] = ("mta", tid)
        names.append(hash(key))
        mtas.append((tid, mta_mac))
    packed = mtas.done()
    return Part(
        packed.blobs,
        packed.spans or (),
        len(packed),
        tuple(names),
        rejects=tuple(rejects),
        skipped=tuple(skipped),
        owners=_mta_owners(rows),
    )


def _endpoint_part(
    rows: Iterable[tuple[Any, ...]],
    hosts: dict[str, int | tuple[str, int]],
    dropped_rows: Mapping[tuple[str, int], str],
) -> Part:
    """Endpoint rows (ENDPOINT_COLUMNS) -> their part; names go into ``hosts``."""
    endpoints: list[Endpoint] = []
    rejects: list[Reject] = []
    for eid, hostname, raw, is_fixed, ip, modemmac in rows:
        eid = int(eid)
        if dropped_rows and (reason := dropped_rows.get(("endpoint", eid))) is not None:
            rejects.append(Reject("endpoint", eid, reason))
            continue
        try:
            name = host_name(hostname, "hostname")
            ep_mac = None if blank(raw) else mac(raw)
            remote = None
            if ep_mac is None:
                remote = mac(modemmac, "mac of its modem")
            fixed = None
            if is_fixed and not blank(ip):
                fixed = ipv4(ip, "ip")
            key = name
            if key in hosts:
                raise BadValue(_taken(hosts, name))
        except BadValue as exc:
            rejects.append(Reject("endpoint", eid, str(exc)))
            continue
        hosts[key] = ("endpoint", eid)
        endpoints.append(Endpoint(eid, name, ep_mac, remote, fixed))
    return Part(
        (),
        (),
        len(endpoints),
        tuple(hash(e.hostname) for e in endpoints),
        rejects=tuple(rejects),
        endpoints=tuple(endpoints),
    )


def _chunks(rows: Sequence[Row], columns: tuple[str, ...]) -> list[bytes] | None:
    """The packed chunks of a big table as the database read keeps them (see db.RowCache),
    or None when ``rows`` are not kept that way (then they are modelled in one go)."""
    packed = rows.rows if isinstance(rows, Table) and rows.columns == columns else None
    return list(packed.blobs) if isinstance(packed, PackedRows) and packed.plain else None


def _packed(parts: Sequence[Part], make: Callable[[Any], T]) -> PackedRows[T]:
    return PackedRows(
        [b for p in parts for b in p.blobs],
        sum(p.count for p in parts),
        make,
        spans=[s for p in parts for s in p.spans],
    )


#: the big tables modelled chunk by chunk: table -> (its columns, what models a chunk)
_CHUNKED: dict[str, tuple[str, ...]] = {
    "mta": MTA_COLUMNS,
    "modem": MODEM_COLUMNS,
    "endpoint": ENDPOINT_COLUMNS,
}


def _by_chunk(snap: Snapshot, cache: PartCache) -> dict[str, list[Part]] | None:
    """The parts of the big tables chunk by chunk, unchanged ones from ``cache``; None when
    they are not read in chunks or a host name is declared in two chunks (or tables): then
    only a build in one go, in upstream's order, can say which row keeps it."""
    chunks = {t: _chunks(getattr(snap, t), columns) for t, columns in _CHUNKED.items()}
    if any(c is None for c in chunks.values()):
        return None
    new: dict[PartKey, Part] = {}
    out: dict[str, list[Part]] = {t: [] for t in _CHUNKED}
    owners: list[int] = []
    fresh = 0
    for table in _CHUNKED:  # MTAs first: a modem's line says whether it owns one
        for blob in chunks[table] or ():
            key = (table, blob)
            part = cache.parts.get(key)
            if part is not None and table == "modem" and not _same_owners(part, owners):
                part = None  # an MTA came or went for one of its modems
            if part is None:
                rows = marshal.loads(blob)
                if table == "mta":
                    part = _mta_part(rows, {}, {})
                elif table == "modem":
                    span = (min(r[0] for r in rows), max(r[0] for r in rows)) if rows else None
                    seen = _owners_within(owners, span)
                    part = replace(
                        _modem_part(rows, frozenset(seen), {}, {}),
                        rows_span=span,
                        owners_seen=seen,
                    )
                else:
                    part = _endpoint_part(rows, {}, {})
                fresh += 1
            new[key] = part
            out[table].append(part)
        if table == "mta":
            owners = cache.sorted_owners(tuple(chunks["mta"] or ()), out["mta"])
    unique = cache.declare(new)
    cache.parts = new
    cache.last = (fresh, len(new))
    return out if unique else None


def _netgws(
    snap: Snapshot,
    ha: HA,
    dropped_optional: Mapping[int, str],
    dropped_pools: Mapping[int, str],
    cache: PartCache | None,
) -> tuple[tuple[NetGw, ...], tuple[Reject, ...]]:
    """The CMTSs with their pools and what was rejected of them; the last build's when its
    inputs were the same (they are a few hundred rows, but a pool cut by thousands of fixed
    endpoints is not cheap)."""
    dropped = (sorted(dropped_optional.items()), sorted(dropped_pools.items()))
    key = repr((list(snap.netgw), list(snap.ippool), list(snap.fixed_ips), ha, dropped))
    if cache is not None and cache.netgws is not None and cache.netgws[0] == key:
        return cache.netgws[1], cache.netgws[2]
    rejects: list[Reject] = []
    netgws = _build_netgws(snap, ha, rejects, dropped_optional, dropped_pools)
    if cache is not None:
        cache.netgws = (key, netgws, tuple(rejects))
    return netgws, tuple(rejects)


def build(
    snap: Snapshot,
    role: str,
    *,
    default_network_prefix: int = 22,
    dropped_optional: Mapping[int, str] | None = None,
    dropped_rows: Mapping[tuple[str, int], str] | None = None,
    parts: PartCache | None = None,
) -> Model:
    """The validated model of a snapshot for this node's ``role``.

    ``dropped_optional`` (pool id -> reason) and ``dropped_rows`` ((table, id) -> reason) name
    what the real dhcpd rejected in an earlier attempt; it is left out and reported.
    ``parts``: where the modelled chunks of the big tables are kept from one build to the next
    (an unchanged chunk is not modelled again; the result is the same as without).
    """
    dropped_rows = dropped_rows or {}
    rejects: list[Reject] = []
    ha = build_ha(_first(snap.provha, "provha"), role, rejects)
    base = build_base(_first(snap.provbase, "provbase"), default_network_prefix, rejects)
    mta_domain = None
    if snap.provvoip:
        row = _first(snap.provvoip, "provvoip")
        if not blank(row.get("mta_domain")):
            try:
                mta_domain = domain(row["mta_domain"], "mta_domain")
            except BadValue as exc:
                rejects.append(Reject("provvoip", row.get("id"), f"{exc}; zone left out"))

    netgws, pool_rejects = _netgws(
        snap,
        ha,
        dropped_optional or {},
        {i: r for (t, i), r in dropped_rows.items() if t == "ippool"},
        parts,
    )
    rejects.extend(pool_rejects)
    # One namespace for dhcpd host names across modems, endpoints and MTAs, in that order:
    # name -> a modem's id, or (table, id) of the others. Case counts, as in dhcpd ("host x:
    # already exists" is an exact match; `host CM-1` beside `host cm-1` is accepted, and
    # upstream writes both).
    chunked = None
    if parts is not None and not any(t in _CHUNKED for t, _ in dropped_rows):
        chunked = _by_chunk(snap, parts)
    if chunked is None:
        mta_rows = list(tuples(snap.mta, MTA_COLUMNS))  # read twice
        hosts: dict[str, int | tuple[str, int]] = {}
        chunked = {
            "modem": [
                _modem_part(
                    tuples(snap.modem, MODEM_COLUMNS), _mta_owners(mta_rows), hosts, dropped_rows
                )
            ],
            "endpoint": [
                _endpoint_part(tuples(snap.endpoint, ENDPOINT_COLUMNS), hosts, dropped_rows)
            ],
            "mta": [_mta_part(mta_rows, hosts, dropped_rows)],
        }
    modem_parts, ordered = chunked["modem"], chunked["modem"] + chunked["endpoint"] + chunked["mta"]
    return Model(
        ha=ha,
        base=base,
        mta_domain=mta_domain,
        netgws=netgws,
        modems=_packed(modem_parts, Modem._make),
        public_modems=tuple(r for p in modem_parts for r in p.public),
        blocked_modems=tuple(r for p in modem_parts for r in p.blocked),
        mtas=_packed(chunked["mta"], Mta._make),
        endpoints=tuple(e for p in chunked["endpoint"] for e in p.endpoints),
        rejects=(*rejects, *(r for p in ordered for r in p.rejects)),
        skipped=tuple(s for p in ordered for s in p.skipped),
    )
