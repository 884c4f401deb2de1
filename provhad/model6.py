"""Snapshot -> DHCPv6 model for Kea: typed, validated ``ippool``/``endpoint`` rows of version
'6'. Pure: no I/O.

Every value that reaches a Kea file is an IPv6 address, network, prefix length, MAC or DNS
label checked here, so no database value can add a JSON member. A row Kea would reject is left
out and reported as a :class:`~provhad.model.Reject` (table, id, reason); a single bad row
would otherwise make ``kea-dhcp6 -t`` reject the whole set, the v4 files included.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from provhad.model import BadValue, Reject, blank, label, mac
from provhad.snapshot import Row, Snapshot


class Reservation6(NamedTuple):
    """A v6 endpoint with MAC and IP: one entry of hosts6.conf."""

    id: int
    mac: str
    ip: ipaddress.IPv6Address
    prefix: ipaddress.IPv6Network
    hostname: str


@dataclass(frozen=True)
class Pool6:
    """A version-6 ``ippool`` row: one Kea subnet6 with an address pool and a pd-pool."""

    id: int
    netgw_id: int
    subnet: ipaddress.IPv6Network
    start: ipaddress.IPv6Address
    end: ipaddress.IPv6Address
    relay: ipaddress.IPv6Address | None
    pd_prefix: ipaddress.IPv6Address
    prefix_len: int
    delegated_len: int
    dns: tuple[ipaddress.IPv6Address, ...]
    #: the reservations whose address lies in this subnet
    reservations: tuple[Reservation6, ...] = ()


@dataclass(frozen=True)
class Gateway6:
    """A CMTS-type NetGw as one Kea shared network (named by its id, as upstream does)."""

    id: int
    pools: tuple[Pool6, ...]


@dataclass(frozen=True)
class Model6:
    gateways: tuple[Gateway6, ...]
    reservations: tuple[Reservation6, ...]
    rejects: tuple[Reject, ...]

    @property
    def pools(self) -> list[Pool6]:
        return [p for g in self.gateways for p in g.pools]

    @property
    def shared_hosts(self) -> bool:
        """Whether upstream's layout works: hosts6.conf included in every subnet. Kea (>= 2.0)
        rejects a reservation outside its subnet, so that holds only when every reservation
        lies in every subnet (in practice: one v6 subnet, or no reservations)."""
        return all(len(p.reservations) == len(self.reservations) for p in self.pools)


def ipv6(value: Any, column: str) -> ipaddress.IPv6Address:
    """An IPv6 address (surrounding blanks ignored)."""
    try:
        if not isinstance(value, str) or not value.strip(" ").isascii():
            raise ValueError(value)
        return ipaddress.IPv6Address(value.strip(" "))
    except ValueError:
        raise BadValue(f"{column} {value!r} is not an IPv6 address") from None


def prefix_length(value: Any, column: str) -> int:
    """'/NN' or 'NN' with 1 <= NN <= 128 (upstream strips the slash of prefix_len)."""
    text = value.strip(" ").removeprefix("/") if isinstance(value, str) else str(value)
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 128):
        raise BadValue(f"{column} {value!r} is not an IPv6 prefix length")
    return int(text)


def network6(value: Any, column: str) -> ipaddress.IPv6Network:
    """An IPv6 network 'addr/len' without host bits."""
    try:
        if not isinstance(value, str) or "/" not in value or not value.isascii():
            raise ValueError(value)
        return ipaddress.IPv6Network(value.strip(" "))
    except ValueError:
        raise BadValue(f"{column} {value!r} is not an IPv6 prefix (address/length)") from None


def build_pool(row: Row) -> Pool6:
    """One version-6 pool; raises BadValue naming the column that Kea could not take."""
    net = ipv6(row.get("net"), "net")
    mask = row.get("netmask")
    # upstream writes net.netmask: only '/NN' makes a prefix of it
    if not isinstance(mask, str) or not mask.strip(" ").startswith("/"):
        raise BadValue(f"netmask {mask!r} is not '/NN' (upstream writes net and netmask joined)")
    length = prefix_length(mask, "netmask")
    try:
        subnet = ipaddress.IPv6Network(f"{net}/{length}")
    except ValueError:
        raise BadValue(f"net {row.get('net')!r} has host bits set for netmask {mask}") from None
    start = ipv6(row.get("ip_pool_start"), "ip_pool_start")
    end = ipv6(row.get("ip_pool_end"), "ip_pool_end")
    for name, addr in (("ip_pool_start", start), ("ip_pool_end", end)):
        if addr not in subnet:
            raise BadValue(f"{name} {addr} is not inside {subnet}")
    if start > end:
        raise BadValue(f"ip_pool_start {start} is above ip_pool_end {end}")
    raw_relay = row.get("router_ip")
    relay = None if blank(raw_relay) else ipv6(raw_relay, "router_ip")
    for column in ("prefix", "prefix_len", "delegated_len"):
        if blank(row.get(column)):
            raise BadValue(
                f"{column} is empty (the pd-pool needs prefix, prefix_len, delegated_len)"
            )
    pd_prefix = ipv6(row.get("prefix"), "prefix")
    prefix_len = prefix_length(row.get("prefix_len"), "prefix_len")
    delegated_len = prefix_length(row.get("delegated_len"), "delegated_len")
    if ipaddress.IPv6Network(f"{pd_prefix}/{prefix_len}", strict=False).network_address != (
        pd_prefix
    ):
        raise BadValue(f"prefix {pd_prefix} has host bits set for prefix_len {prefix_len}")
    if delegated_len < prefix_len:
        raise BadValue(f"delegated_len {delegated_len} is shorter than prefix_len {prefix_len}")
    dns = tuple(ipv6(row[c], c) for c in ("dns1_ip", "dns2_ip", "dns3_ip") if not blank(row.get(c)))
    return Pool6(
        int(row["id"]), int(row["netgw_id"]), subnet, start, end, relay,
        pd_prefix, prefix_len, delegated_len, dns,
    )  # fmt: skip


def build_reservation(row: Row) -> Reservation6:
    """One version-6 endpoint; raises BadValue naming the column that Kea could not take."""
    if blank(row.get("prefix")):
        raise BadValue("prefix is empty (upstream would write an empty prefix Kea rejects)")
    return Reservation6(
        int(row["id"]),
        mac(row.get("mac")),
        ipv6(row.get("ip"), "ip"),
        network6(row.get("prefix"), "prefix"),
        label(row.get("hostname"), "hostname"),
    )


def _reservations(rows: Sequence[Row], rejects: list[Reject]) -> list[Reservation6]:
    """Valid reservations; a later row repeating a MAC, IP, prefix or host name is rejected,
    since Kea rejects a set with such duplicates in a subnet."""
    out: list[Reservation6] = []
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        try:
            res = build_reservation(row)
            keys = [
                ("mac", res.mac),
                ("ip", str(res.ip)),
                ("prefix", str(res.prefix)),
                ("hostname", res.hostname.lower()),
            ]
            for key in keys:
                if key in seen:
                    raise BadValue(
                        f"{key[0]} {key[1]} is already reserved by endpoint id {seen[key]}"
                    )
        except BadValue as exc:
            rejects.append(Reject("endpoint", row.get("id"), str(exc)))
            continue
        seen.update((key, res.id) for key in keys)
        out.append(res)
    return out


def build(snap: Snapshot) -> Model6:
    """The DHCPv6 model of ``snap``: gateways (cmts NetGws, all of them, as upstream lists
    them in gateways6.conf) with their valid pools, and the valid reservations."""
    rejects: list[Reject] = []
    gateway_ids = [int(r["id"]) for r in snap.netgw]
    pools: dict[int, list[Pool6]] = {gid: [] for gid in gateway_ids}
    subnets: dict[ipaddress.IPv6Network, int] = {}
    for row in snap.ippool6:
        try:
            pool = build_pool(row)
            if pool.subnet in subnets:
                raise BadValue(
                    f"subnet {pool.subnet} is already used by ippool id {subnets[pool.subnet]}"
                )
        except (BadValue, KeyError, TypeError, ValueError) as exc:
            rejects.append(Reject("ippool", row.get("id"), str(exc)))
            continue
        if not blank(row.get("optional")):
            rejects.append(
                Reject("ippool", pool.id, "optional left out: raw Kea JSON is never copied")
            )
        if pool.netgw_id in pools:  # pools of other NetGw types are not served, as upstream
            subnets[pool.subnet] = pool.id
            pools[pool.netgw_id].append(pool)
    reservations = _reservations(snap.endpoint6, rejects)
    all_pools = [p for ps in pools.values() for p in ps]
    kept = []
    for res in reservations:
        if any(res.ip in p.subnet for p in all_pools):
            kept.append(res)
        else:
            rejects.append(Reject("endpoint", res.id, f"ip {res.ip} is inside no v6 pool's subnet"))
    gateways = tuple(
        Gateway6(
            gid,
            tuple(
                replace(p, reservations=tuple(r for r in kept if r.ip in p.subnet))
                for p in pools[gid]
            ),
        )
        for gid in gateway_ids
    )
    return Model6(gateways, tuple(kept), tuple(sorted(rejects, key=lambda r: (r.table, r.id or 0))))
