"""A deterministic, parameterised sample NMS Prime network (tests, demos, benchmarks).

``generate(spec)`` yields the rows of every table of ``tests/fixtures/schema.sql``;
``load(conn, spec)`` inserts them into an empty database that has that schema. The same
spec always gives byte-identical rows: every random choice comes from ``random.Random``
streams seeded from ``spec.seed`` and all timestamps are offsets from a fixed base time.

Address plan (non-overlapping across the whole network, live and deleted rows alike):

===========  ==================  ==================================================
pool type    supernet            block size
===========  ==================  ==================================================
CM           10.0.0.0/9          sized for the CMTS's modems, several /20 if needed
CPEPriv      100.64.0.0/11       as CM, several /19 if needed
MTA          100.96.0.0/11       sized for the CMTS's MTAs, several /21 if needed
CPEPub       198.18.0.0/15       sized for fixed IPs + public CPEs, /22 at most
===========  ==================  ==================================================

Every pool has ``router_ip`` = first host, ``broadcast_ip`` = last address and a range
that starts after the router and ends before the broadcast address, so the rendered
``subnet`` blocks pass ``dhcpd -t``. Modems carry no CMTS column (upstream learns it from
the DHCP relay); :func:`netgw_of_modem` gives the CMTS the sample places a modem behind.
Timestamps are UTC; :func:`load` sets the session time zone to ``+00:00``. At the default
shares the address plan holds up to about 1.2 million modems.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import itertools
import math
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pymysql
from pymysql.constants import CLIENT

__all__ = [
    "BASE_TIME",
    "CONTRACT_ID0",
    "ENDPOINT_ID0",
    "MASTER_IP",
    "MODEM_ID0",
    "MTA_ID0",
    "SLAVE_IP",
    "SampleSpec",
    "dns_secret",
    "generate",
    "load",
    "main",
    "netgw_of_modem",
]

Row = tuple[object, ...]
Tables = dict[str, tuple[list[str], Iterable[Row]]]

MODEM_ID0 = 100_000
ENDPOINT_ID0 = 200_000
MTA_ID0 = 300_000
CONTRACT_ID0 = 500_000
MASTER_IP = "172.20.0.1"
SLAVE_IP = "172.20.0.2"
DOMAIN = "nmsprime.test"
MTA_DOMAIN = "mta.nmsprime.test"
BASE_TIME = datetime(2021, 6, 1, 12, 0, 0)  # UTC

# Configfile ids: 1 and 2 are upstream's soft-deleted dummies.
CF_CM, CF_MTA, CF_CM_FAST = 3, 4, 5

_CM_NET = IPv4Network("10.0.0.0/9")
_CPEPRIV_NET = IPv4Network("100.64.0.0/11")
_MTA_NET = IPv4Network("100.96.0.0/11")
_CPEPUB_NET = IPv4Network("198.18.0.0/15")

# Seconds between two modems' created_at: 2**24 modems still end before 2038 (TIMESTAMP).
_MODEM_STEP = 20
_HEADROOM = 1.25  # pools are sized for 125 % of their expected clients
_MAX_MODEMS = 1 << 24  # MAC suffixes are 24-bit bijections of the row ordinal

# Unicast OUIs; disjoint per table so MACs are unique across modem, mta and endpoint.
_MODEM_OUIS = ("38:43:7d", "90:5c:44", "c0:05:c2")
_MTA_OUIS = ("38:43:7e", "90:5c:45")
_ENDPOINT_OUIS = ("dc:a6:32", "b8:27:eb", "00:1a:2b")
_MAC_MULT = 0x5BD1E9  # odd, so i -> i * _MAC_MULT mod 2**24 is a bijection

_SERIES = (("Cisco uBR10k", "Cisco"), ("Casa C100G", "Casa"), ("Arris E6000", "Arris"))
_MODELS = (
    ("TC4400", "SR1.0.3"),
    ("CH7465LG", "CH7465LG-NCIP-6.12.18.25"),
    ("FAST3890", "50.10.19.T1"),
    ("SBG10", "D31SBG10-1.0.0.3"),
)
_FIRST = ("Anna", "Ben", "Carla", "David", "Eva", "Felix", "Greta", "Hans", "Ida", "Jonas")
_LAST = ("Meier", "Schmidt", "Fischer", "Weber", "Wagner", "Becker", "Hoffmann", "Koch")
_OPTIONAL = (
    'option domain-name "example.net";',
    "default-lease-time 3600;\nmax-lease-time 7200;",
    "option time-offset 3600;",
)

# Modem flags (bytearray per modem keeps 500k modems at a few hundred KB).
_DELETED, _BAD_MAC, _PUBLIC, _BLOCKED = 1, 2, 4, 8


@dataclass(frozen=True)
class SampleSpec:
    """Size and mix of the sample network; every share is a fraction of the modems."""

    modems: int = 2000
    #: CMTS count = ceil(modems / modems_per_cmts), at least 1; modems are spread evenly.
    modems_per_cmts: int = 5000
    #: modems with one MTA (5 % of those have two)
    mta_share: float = 0.3
    #: modems with a v4 CPE endpoint; half of those have a fixed IP from a CPEPub pool
    endpoint_share: float = 0.05
    #: modem.public = 1
    public_share: float = 0.02
    #: modem.internet_access = 0
    blocked_share: float = 0.01
    #: soft-deleted modem, mta and endpoint rows; > 0 also adds a soft-deleted CMTS
    #: (with live pools) and a soft-deleted ippool
    deleted_share: float = 0.005
    #: modems with a NULL, '' or 'ff:...' MAC (at least one of each kind)
    bad_mac_share: float = 0.002
    #: ippool rows with active = 0
    inactive_pools: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.modems <= _MAX_MODEMS:
            raise ValueError(f"modems must be in 0..{_MAX_MODEMS}")
        if self.modems_per_cmts < 1:
            raise ValueError("modems_per_cmts must be >= 1")
        for name in (
            "mta_share",
            "endpoint_share",
            "public_share",
            "blocked_share",
            "deleted_share",
            "bad_mac_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in 0..1")
        if self.inactive_pools < 0:
            raise ValueError("inactive_pools must be >= 0")

    @property
    def cmts_count(self) -> int:
        """Number of live CMTS (netgw ids 1..cmts_count)."""
        return max(1, math.ceil(self.modems / self.modems_per_cmts))


def netgw_of_modem(spec: SampleSpec, modem_id: int) -> int:
    """The netgw id of the CMTS the sample places ``modem_id`` behind."""
    i = modem_id - MODEM_ID0
    if not 0 <= i < spec.modems:
        raise ValueError(f"no modem {modem_id} in this sample")
    return 1 + i * spec.cmts_count // spec.modems


def dns_secret(seed: int, role: str) -> str:
    """A base64 hmac-md5 secret (16 bytes, like ``ddns-confgen -a hmac-md5``)."""
    digest = hashlib.sha256(f"provhad-sample:{seed}:{role}".encode()).digest()
    return base64.b64encode(digest[:16]).decode("ascii")


# --------------------------------------------------------------------------- planning


def _share(share: float, n: int) -> int:
    """Rows a share selects out of n: rounded, but at least one if the share is > 0."""
    if share <= 0 or n <= 0:
        return 0
    return min(n, max(1, round(share * n)))


def _mac(ouis: tuple[str, ...], ordinal: int, salt: int) -> str:
    s = (ordinal * _MAC_MULT + salt) & 0xFFFFFF
    return f"{ouis[ordinal % len(ouis)]}:{s >> 16:02x}:{(s >> 8) & 255:02x}:{s & 255:02x}"


def _ip(n: int) -> str:
    return str(IPv4Address(n))


class _Allocator:
    """Hands out aligned, non-overlapping blocks of one supernet in ascending order."""

    def __init__(self, net: IPv4Network) -> None:
        self.net = net
        self.cursor = int(net.network_address)
        self.end = int(net.broadcast_address) + 1

    def take(self, prefix: int) -> int:
        size = 1 << (32 - prefix)
        start = (self.cursor + size - 1) & ~(size - 1)
        if start + size > self.end:
            raise ValueError(f"sample address space {self.net} exhausted; use fewer modems")
        self.cursor = start + size
        return start


def _range_offset(size: int) -> int:
    # Big pools keep a few addresses after the router for static use, as operators do.
    return 10 if size >= 256 else 2


def _usable(prefix: int) -> int:
    size = 1 << (32 - prefix)
    return size - 1 - _range_offset(size)


def _blocks(demand: int, max_block: int, min_block: int = 28) -> list[int]:
    """Prefix lengths of the pools that hold ``demand`` clients plus headroom."""
    need = max(1, math.ceil(demand * _HEADROOM))
    for prefix in range(min_block, max_block - 1, -1):
        if _usable(prefix) >= need:
            return [prefix]
    return [max_block] * math.ceil(need / _usable(max_block))


@dataclass
class _Pool:
    id: int
    netgw_id: int
    type: str
    net: int
    prefix: int
    deleted: bool = False

    @property
    def start(self) -> int:
        return self.net + _range_offset(1 << (32 - self.prefix))

    @property
    def end(self) -> int:
        return self.net + (1 << (32 - self.prefix)) - 2


@dataclass
class _Plan:
    spec: SampleSpec
    salts: dict[str, int]  # per table, so MAC suffixes differ between tables
    flags: bytearray
    bad_kind: dict[int, int]
    mta_count: bytearray
    mta_deleted: set[int]  # ordinals among the real MTAs
    # v4 endpoints in id order: (modem index, fixed_ip, ip or None, mac is NULL)
    endpoints: list[tuple[int, bool, int | None, bool]]
    endpoints6: list[int]  # modem indices of the v6 endpoints (after the v4 ones)
    endpoint_deleted: set[int]  # ordinals among all endpoints
    pools: list[_Pool] = field(default_factory=list)
    inactive: set[int] = field(default_factory=set)  # pool ids
    bundle_ip: dict[int, int] = field(default_factory=dict)  # netgw id -> router of 1st CM pool


def _cmts_slices(spec: SampleSpec) -> list[range]:
    """Modem indices behind each live CMTS (the inverse of netgw_of_modem)."""
    n, c = spec.modems, spec.cmts_count
    return [range(-(-j * n // c), -(-(j + 1) * n // c)) for j in range(c)]


def _plan(spec: SampleSpec) -> _Plan:
    rng = random.Random(f"{spec.seed}:plan")
    n = spec.modems
    salts = {table: rng.getrandbits(24) for table in ("modem", "mta", "endpoint")}
    flags = bytearray(n)

    for i in rng.sample(range(n), _share(spec.deleted_share, n)):
        flags[i] |= _DELETED
    k_bad = _share(spec.bad_mac_share, n)
    if k_bad:
        k_bad = min(n, max(k_bad, 3))  # all three kinds of bad MAC
    bad_kind: dict[int, int] = {}
    for j, i in enumerate(sorted(rng.sample(range(n), k_bad))):
        flags[i] |= _BAD_MAC
        bad_kind[i] = j

    def good_sample(k: int) -> list[int]:
        # Oversample by the bad count: the first k good ones are a uniform sample of good modems.
        picked = rng.sample(range(n), min(n, k + k_bad))
        return [i for i in picked if not flags[i] & _BAD_MAC][:k]

    # Public, blocked and endpoint modems have valid MACs: their MAC is printed into
    # class/subclass lines and agent.remote-id host entries, which a bad MAC would break.
    for i in good_sample(_share(spec.public_share, n)):
        flags[i] |= _PUBLIC
    for i in good_sample(_share(spec.blocked_share, n)):
        flags[i] |= _BLOCKED

    mta_count = bytearray(n)
    mta_modems = rng.sample(range(n), _share(spec.mta_share, n))
    for i in mta_modems:
        mta_count[i] = 1
    for i in rng.sample(mta_modems, _share(0.05, len(mta_modems))):
        mta_count[i] = 2
    n_mta = len(mta_modems) + sum(1 for i in mta_modems if mta_count[i] == 2)
    mta_deleted = set(rng.sample(range(n_mta), _share(spec.deleted_share, n_mta)))

    ep_modems = sorted(good_sample(_share(spec.endpoint_share, n)))
    fixed = set(rng.sample(ep_modems, (len(ep_modems) + 1) // 2))
    endpoints: list[tuple[int, bool, int | None, bool]] = [
        (i, i in fixed, None, rng.random() < 0.2) for i in ep_modems
    ]
    # v6 endpoints sit behind modems that already have a v4 CPE (a dual-stack customer).
    endpoints6 = sorted(rng.sample(ep_modems, min(len(ep_modems), max(2, len(ep_modems) // 100))))
    n_ep = len(endpoints) + len(endpoints6)
    endpoint_deleted = set(rng.sample(range(n_ep), _share(spec.deleted_share, n_ep)))

    plan = _Plan(
        spec,
        salts,
        flags,
        bad_kind,
        mta_count,
        mta_deleted,
        endpoints,
        endpoints6,
        endpoint_deleted,
    )
    _plan_pools(plan, rng)
    return plan


def _plan_pools(plan: _Plan, rng: random.Random) -> None:
    spec = plan.spec
    alloc = {
        t: _Allocator(net)
        for t, net in (
            ("CM", _CM_NET),
            ("CPEPriv", _CPEPRIV_NET),
            ("MTA", _MTA_NET),
            ("CPEPub", _CPEPUB_NET),
        )
    }
    max_block = {"CM": 20, "CPEPriv": 19, "MTA": 21, "CPEPub": 22}
    pools = plan.pools

    def add(netgw_id: int, typ: str, prefixes: list[int], deleted: bool = False) -> None:
        for prefix in prefixes:
            pools.append(
                _Pool(len(pools) + 1, netgw_id, typ, alloc[typ].take(prefix), prefix, deleted)
            )

    slices = _cmts_slices(spec)
    fixed_by_cmts: list[list[int]] = [[] for _ in slices]  # endpoint ordinals
    for k, (i, is_fixed, _, _) in enumerate(plan.endpoints):
        if is_fixed:
            fixed_by_cmts[i * spec.cmts_count // spec.modems].append(k)

    for j, modems in enumerate(slices):
        gw = j + 1
        n_mta = sum(plan.mta_count[i] for i in modems)
        n_public = sum(1 for i in modems if plan.flags[i] & _PUBLIC)
        add(gw, "CM", _blocks(len(modems), max_block["CM"]))
        add(gw, "CPEPriv", _blocks(len(modems), max_block["CPEPriv"]))
        add(gw, "MTA", _blocks(n_mta, max_block["MTA"]))
        first_pub = len(pools)
        # Public modems may have up to max_cpe (2) CPEs, each with a dynamic CPEPub lease.
        add(gw, "CPEPub", _blocks(len(fixed_by_cmts[j]) + 2 * n_public, max_block["CPEPub"]))
        _assign_fixed_ips(plan, rng, pools[first_pub:], fixed_by_cmts[j])

    live_v4 = [p.id for p in pools]
    if spec.inactive_pools > len(live_v4):
        raise ValueError(f"inactive_pools > the {len(live_v4)} pools of the sample")
    plan.inactive = set(rng.sample(live_v4, spec.inactive_pools))

    c = spec.cmts_count
    if spec.deleted_share > 0:
        add(1, "CPEPriv", [24], deleted=True)  # a soft-deleted pool of a live CMTS
    add(c + 1, "CPEPriv", [24])  # the BRAS's pool: not a CMTS, so never rendered
    if spec.deleted_share > 0:
        # A soft-deleted CMTS whose pools are still live rows: generation must go by the
        # netgw, not by the pool.
        add(c + 2, "CM", [24])
        add(c + 2, "CPEPriv", [24])
    for pool in reversed(pools):
        if pool.type == "CM":  # the bundle interface's address: gateway of the first CM pool
            plan.bundle_ip[pool.netgw_id] = pool.net + 1


def _assign_fixed_ips(plan: _Plan, rng: random.Random, pub: list[_Pool], eps: list[int]) -> None:
    """Give each fixed endpoint a distinct address inside the CPEPub ranges of its CMTS."""
    sizes = [p.end - p.start + 1 for p in pub]
    for k, offset in zip(eps, rng.sample(range(sum(sizes)), len(eps)), strict=True):
        for pool, size in zip(pub, sizes, strict=True):
            if offset < size:
                i, is_fixed, _, mac_null = plan.endpoints[k]
                plan.endpoints[k] = (i, is_fixed, pool.start + offset, mac_null)
                break
            offset -= size


# --------------------------------------------------------------------------- rows

_GENERIC = "id created_at updated_at deleted_at "
_COLUMNS: dict[str, list[str]] = {
    table: (_GENERIC + names).split()
    for table, names in {
        "provha": "master master_dns_password slaves slave_dns_password load_ratio_master"
        " slave_config_rebuild_interval",
        "provbase": "provisioning_server ro_community rw_community notif_mail domain_name"
        " dns_password dhcp_def_lease_time dhcp_max_lease_time startid_contract startid_modem"
        " startid_endpoint max_cpe ds_rate_coefficient us_rate_coefficient"
        " multiple_provisioning_systems additional_modem_reset modem_edit_page_new_tab"
        " random_ip_allocation ppp_session_timeout auto_factory_reset acct_interim_interval",
        "provvoip": "startid_mta mta_domain default_sip_registrar default_country_code",
        "configfile": "name text device public parent_id firmware is_dummy monitoring",
        "netgw": "hostname series ip community_rw community_ro company network state monitoring"
        " support_state type username password ssh_auto_prov coa_port ipv6 ssh_port",
        "ippool": "netgw_id type net netmask ip_pool_start ip_pool_end router_ip broadcast_ip"
        " dns1_ip dns2_ip dns3_ip optional description version prefix prefix_len delegated_len"
        " active",
        "modem": "name hostname contract_id mac public internet_access serial_num description"
        " configfile_id netelement_id qos_id ppp_username us_pwr us_snr ds_pwr ds_snr model"
        " sw_rev",
        "mta": "modem_id mac hostname configfile_id type is_dummy",
        "endpoint": "hostname mac description fixed_ip modem_id ip add_reverse version prefix",
    }.items()
}


def _row(table: str, **values: object) -> Row:
    """A row of ``table`` from column=value pairs (the rest NULL); for the small tables."""
    unknown = values.keys() - set(_COLUMNS[table])
    assert not unknown, unknown
    return tuple(values.get(c) for c in _COLUMNS[table])


def _config_rows(spec: SampleSpec) -> dict[str, list[Row]]:
    t = BASE_TIME - timedelta(days=365)  # configured long before the modems arrived
    key = dns_secret(spec.seed, "master")
    generic = {"created_at": t, "updated_at": t}

    def cf(id: int, name: str, device: str, text: str | None, **kw: object) -> Row:
        values = {"public": "yes", "firmware": "", "is_dummy": 0, **kw}
        return _row("configfile", id=id, **generic, name=name, device=device, text=text, **values)

    cm_text = "Main\n{\n\tNetworkAccess 1;\n\tMaxCPE 2;\n\tGlobalPrivacyEnable 1;\n}"
    mta_text = "Main\n{\n\tMtaConfigDelimiter 1;\n\tMtaConfigDelimiter 255;\n}"
    return {
        "provha": [
            _row(
                "provha",
                id=1,
                **generic,
                master=MASTER_IP,
                master_dns_password=key,
                slaves=SLAVE_IP,
                slave_dns_password=dns_secret(spec.seed, "slave"),
                load_ratio_master=0.5,
                slave_config_rebuild_interval=3600,
            )
        ],
        "provbase": [
            _row(
                "provbase",
                id=1,
                **generic,
                provisioning_server=MASTER_IP,
                ro_community="public",
                rw_community="private",
                notif_mail=f"noc@{DOMAIN}",
                domain_name=DOMAIN,
                dns_password=key,
                dhcp_def_lease_time=86400,
                dhcp_max_lease_time=172800,
                startid_contract=CONTRACT_ID0,
                startid_modem=MODEM_ID0,
                startid_endpoint=ENDPOINT_ID0,
                max_cpe=2,
                ds_rate_coefficient=1.0,
                us_rate_coefficient=1.0,
                multiple_provisioning_systems=0,
                additional_modem_reset=0,
                modem_edit_page_new_tab=0,
                random_ip_allocation=0,
                ppp_session_timeout=86400,
                auto_factory_reset=0,
                acct_interim_interval=300,
            )
        ],
        "provvoip": [
            _row(
                "provvoip",
                id=1,
                **generic,
                startid_mta=MTA_ID0,
                mta_domain=MTA_DOMAIN,
                default_sip_registrar=f"sip.{DOMAIN}",
                default_country_code="49",
            )
        ],
        "configfile": [
            # upstream's create migration inserts these two soft-deleted dummies
            cf(1, "dummy-cfg-cm", "cm", None, deleted_at=t, is_dummy=1),
            cf(2, "dummy-cfg-mta", "mta", None, deleted_at=t, is_dummy=1),
            cf(CF_CM, "CM base", "cm", cm_text),
            cf(CF_MTA, "MTA base", "mta", mta_text),
            cf(CF_CM_FAST, "CM 1000M", "cm", "Main\n{\n\tMaxCPE 4;\n}", parent_id=CF_CM),
        ],
    }


def _gw_name(kind: str, n: int, width: int) -> str:
    return f"{kind}-{n:0{width}d}"


def _netgw_rows(plan: _Plan) -> list[Row]:
    c = plan.spec.cmts_count
    width = max(2, len(str(c + 2)))
    t = BASE_TIME - timedelta(days=300)
    rows: list[Row] = []

    def cmts(gw: int, updated: datetime, deleted: datetime | None) -> Row:
        series, company = _SERIES[(gw - 1) % len(_SERIES)]
        return _row(
            "netgw",
            id=gw,
            created_at=t,
            updated_at=updated,
            deleted_at=deleted,
            hostname=_gw_name("cmts", gw, width),
            series=series,
            ip=_ip(plan.bundle_ip[gw]),
            community_rw="private",
            community_ro="public",
            company=company,
            support_state="full-support",
            type="cmts",
            ssh_auto_prov=0,
        )

    rows = [cmts(gw, t + timedelta(hours=gw), None) for gw in range(1, c + 1)]
    rows.append(
        _row(
            "netgw",
            id=c + 1,
            created_at=t,
            updated_at=t,
            hostname="bras-01",
            series="Juniper MX204",
            ip="172.20.10.1",
            community_rw="private",
            community_ro="public",
            company="Juniper",
            support_state="verifying",
            type="bras",
            username="radius",
            ssh_auto_prov=0,
            coa_port=3799,
            ssh_port=22,
        )
    )
    if c + 2 in plan.bundle_ip:
        gone = BASE_TIME - timedelta(days=10)
        rows.append(cmts(c + 2, gone, gone))
    return rows


def _ippool_rows(plan: _Plan) -> list[Row]:
    rng = random.Random(f"{plan.spec.seed}:ippool")
    width = max(2, len(str(plan.spec.cmts_count + 2)))
    t = BASE_TIME - timedelta(days=300)
    rows: list[Row] = []
    for p in plan.pools:
        size = 1 << (32 - p.prefix)
        # The GUI also accepts '/NN' in netmask; about one pool in ten uses it.
        mask = f"/{p.prefix}" if p.id % 10 == 3 else str(IPv4Network((0, p.prefix)).netmask)
        created = t + timedelta(minutes=p.id)
        updated = created + timedelta(seconds=rng.randrange(86400 * 200))
        kind = "bras" if p.netgw_id == plan.spec.cmts_count + 1 else "cmts"
        rows.append(
            _row(
                "ippool",
                id=p.id,
                created_at=created,
                updated_at=updated,
                deleted_at=updated if p.deleted else None,
                netgw_id=p.netgw_id,
                type=p.type,
                net=_ip(p.net),
                netmask=mask,
                ip_pool_start=_ip(p.start),
                ip_pool_end=_ip(p.end),
                router_ip=_ip(p.net + 1),
                broadcast_ip=_ip(p.net + size - 1),
                dns1_ip=MASTER_IP,
                dns2_ip=SLAVE_IP if p.id % 2 == 0 else None,
                optional=_OPTIONAL[p.id // 12 % len(_OPTIONAL)] if p.id % 12 == 5 else None,
                description=f"{p.type} pool of {_gw_name(kind, p.netgw_id, width)}",
                version="4",
                active=0 if p.id in plan.inactive else 1,
            )
        )
    # Two v6 pools (one with prefix delegation) that v4 generation must skip.
    for k, typ, pd in (
        (1, "CM", {}),
        (2, "CPEPriv", {"prefix": "2001:db8:100::", "prefix_len": "40", "delegated_len": "56"}),
    ):
        net = f"2001:db8:{k}::"
        rows.append(
            _row(
                "ippool",
                id=len(plan.pools) + k,
                created_at=t,
                updated_at=t,
                netgw_id=1,
                type=typ,
                net=net,
                netmask="/64",
                ip_pool_start=f"{net}100",
                ip_pool_end=f"{net}ffff",
                router_ip=f"{net}1",
                dns1_ip="2001:db8::53",
                description=f"IPv6 {typ} pool",
                version="6",
                active=1,
                **pd,
            )
        )
    return rows


def _modem_time(i: int) -> datetime:
    return BASE_TIME + timedelta(seconds=i * _MODEM_STEP)


def _modem_rows(plan: _Plan) -> Iterator[Row]:
    rng = random.Random(f"{plan.spec.seed}:modem")
    flags, bad_kind, salt = plan.flags, plan.bad_kind, plan.salts["modem"]
    rand, choice, randrange = rng.random, rng.choice, rng.randrange
    # NULL, '' and 'ff:' (reserved, skipped upstream in either case) in turn
    bad_macs = (None, "", "ff:ff:ff:ff:ff:ff", None, "", "FF:FF:FF:FF:FF:FF")
    for i in range(plan.spec.modems):
        mid = MODEM_ID0 + i
        f = flags[i]
        created = _modem_time(i)
        updated = created + timedelta(seconds=randrange(86400 * 90))
        mac = bad_macs[bad_kind[i] % 6] if f & _BAD_MAC else _mac(_MODEM_OUIS, i, salt)
        model, sw_rev = choice(_MODELS)
        yield (
            mid,
            created,
            updated,
            updated if f & _DELETED else None,
            f"{choice(_FIRST)} {choice(_LAST)}",
            f"cm-{mid}",
            CONTRACT_ID0 + i - i // 50,  # every 50th contract has a second modem
            mac,
            1 if f & _PUBLIC else 0,
            0 if f & _BLOCKED else 1,
            f"{randrange(1 << 40):010X}",
            None,
            CF_CM_FAST if rand() < 0.2 else CF_CM,
            None,
            randrange(1, 4),
            None,
            randrange(380, 500),
            randrange(30, 42),
            randrange(-50, 80),
            randrange(350, 420),
            model,
            sw_rev,
        )


def _mta_rows(plan: _Plan) -> Iterator[Row]:
    rng = random.Random(f"{plan.spec.seed}:mta")
    t = BASE_TIME - timedelta(days=365)
    # upstream's create migration inserts these two soft-deleted dummies (ids 1, 2)
    yield (1, t, t, t, 1, None, "dummy-mta-sip", 1, "sip", 1)
    yield (2, t, t, t, 1, None, "dummy-mta-packetcable", 1, "packetcable", 1)
    counts, salt, deleted = plan.mta_count, plan.salts["mta"], plan.mta_deleted
    k = 0
    for i in range(plan.spec.modems):
        for _ in range(counts[i]):
            mta_id = MTA_ID0 + k
            created = _modem_time(i) + timedelta(seconds=rng.randrange(3600))
            updated = created + timedelta(seconds=rng.randrange(86400 * 90))
            yield (
                mta_id,
                created,
                updated,
                updated if k in deleted else None,
                MODEM_ID0 + i,
                _mac(_MTA_OUIS, k, salt),
                f"mta-{mta_id}",
                CF_MTA,
                "packetcable" if rng.random() < 0.2 else "sip",
                0,
            )
            k += 1


def _endpoint_rows(plan: _Plan) -> Iterator[Row]:
    rng = random.Random(f"{plan.spec.seed}:endpoint")
    salt, deleted = plan.salts["endpoint"], plan.endpoint_deleted
    k = 0
    for i, fixed, ip, mac_null in plan.endpoints:
        ep_id = ENDPOINT_ID0 + k
        created = _modem_time(i) + timedelta(seconds=rng.randrange(86400))
        updated = created + timedelta(seconds=rng.randrange(86400 * 90))
        reverse = f"host-{ep_id}.customer.example" if fixed and rng.random() < 0.25 else None
        yield (
            ep_id,
            created,
            updated,
            updated if k in deleted else None,
            f"cpe-{ep_id}",
            None if mac_null else _mac(_ENDPOINT_OUIS, k, salt),
            "router with fixed IP" if fixed else "customer router",
            1 if fixed else 0,
            MODEM_ID0 + i,
            None if ip is None else _ip(ip),
            reverse,
            "4",
            None,
        )
        k += 1
    for n, i in enumerate(plan.endpoints6):
        ep_id = ENDPOINT_ID0 + k
        created = _modem_time(i) + timedelta(seconds=rng.randrange(86400))
        yield (
            ep_id,
            created,
            created,
            created if k in deleted else None,
            f"cpe-{ep_id}",
            _mac(_ENDPOINT_OUIS, k, salt),
            "IPv6 customer router",
            1,
            MODEM_ID0 + i,
            # A short v6 address fits varchar(15): fixed IPs of other versions are not
            # IPv4 and must be skipped when cutting holes into CPEPub ranges (as ip2long does).
            f"2001:db8::{n + 1:x}",
            None,
            "6",
            f"2001:db8:f{n:03x}::/56",
        )
        k += 1


def generate(spec: SampleSpec) -> Tables:
    """Table -> (column names, rows) for the sample; big tables are lazy generators.

    The dict is ordered so that referenced rows come first (config, netgw, ippool, modem,
    mta, endpoint). Each generator can be consumed once.
    """
    plan = _plan(spec)
    rows: dict[str, Iterable[Row]] = {
        **_config_rows(spec),
        "netgw": _netgw_rows(plan),
        "ippool": _ippool_rows(plan),
        "modem": _modem_rows(plan),
        "mta": _mta_rows(plan),
        "endpoint": _endpoint_rows(plan),
    }
    return {table: (list(_COLUMNS[table]), rows[table]) for table in _COLUMNS}


# --------------------------------------------------------------------------- loading

# "command not allowed" (MySQL) / "local infile disabled" (MariaDB, server or client side)
_INFILE_REFUSED = (1148, 4166)
_TSV_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_INSERT_BATCH = 2000


def _tsv_lines(rows: Iterable[Row]) -> Iterator[str]:
    esc = _TSV_ESCAPE
    for row in rows:
        yield (
            "\t".join(
                [
                    "\\N" if v is None else v.translate(esc) if isinstance(v, str) else str(v)
                    for v in row
                ]
            )
            + "\n"
        )


def _load_data(cur: Any, table: str, columns: list[str], path: str) -> int:
    cur.execute(
        f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4"
        " FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
        f" ({', '.join(f'`{c}`' for c in columns)})",
        (path,),
    )
    return int(cur.rowcount)


def _infile_allowed(cur: Any, conn: Any, tmp: str) -> bool:
    """Probe LOAD DATA LOCAL with an empty file: both client and server must allow it."""
    if not conn.client_flag & CLIENT.LOCAL_FILES:
        return False
    path = os.path.join(tmp, "probe.tsv")
    with open(path, "w"):
        pass
    try:
        _load_data(cur, "provha", ["id"], path)
    except pymysql.MySQLError as e:
        if e.args and e.args[0] in _INFILE_REFUSED:
            return False
        raise
    return True


def _load_table(
    cur: Any, conn: Any, table: str, columns: list[str], rows: Iterable[Row], tmp: str | None
) -> int:
    if tmp is None:
        sql = (
            f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
        )
        written = loaded = 0
        it = iter(rows)
        while batch := list(itertools.islice(it, _INSERT_BATCH)):
            written += len(batch)
            loaded += cur.executemany(sql, batch)  # pymysql sends multi-row INSERTs
    else:
        path = os.path.join(tmp, f"{table}.tsv")
        with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
            written = 0
            for line in _tsv_lines(rows):
                out.write(line)
                written += 1
        try:
            loaded = _load_data(cur, table, columns, path)
        finally:
            os.unlink(path)  # keep disk use at one table's file
    # LOAD DATA LOCAL turns errors into warnings and skips rows, so check both.
    warnings = conn.show_warnings()
    if loaded != written or warnings:
        raise RuntimeError(f"{table}: loaded {loaded} of {written} rows; {warnings[:3]!r}")
    return written


def load(conn: Any, spec: SampleSpec) -> dict[str, int]:
    """Insert the sample into the empty tables of ``conn``'s database; return rows per table.

    Uses ``LOAD DATA LOCAL INFILE`` from temporary TSV files (one table at a time) when the
    connection was opened with ``local_infile=True`` and the server's ``local_infile`` is ON
    (the MariaDB default); otherwise multi-row INSERTs. Everything runs in one transaction.
    pymysql lets the server name any client file to send once ``local_infile`` is on, so
    open such a connection for the loader only, never for the daemon.
    """
    tables = generate(spec)
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"SELECT 1 FROM `{table}` LIMIT 1")
            if cur.fetchone():
                raise ValueError(f"table {table} is not empty")
        cur.execute("SELECT @@SESSION.time_zone")
        (tz,) = cur.fetchone()
        # UTC, so that no local DST gap can shift or reject a TIMESTAMP value.
        cur.execute("SET SESSION time_zone = '+00:00'")
        try:
            with tempfile.TemporaryDirectory(prefix="provhad-sample-") as tmp:
                conn.begin()
                try:
                    use = tmp if _infile_allowed(cur, conn, tmp) else None
                    for table, (columns, rows) in tables.items():
                        counts[table] = _load_table(cur, conn, table, columns, rows, use)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        finally:
            cur.execute("SET SESSION time_zone = %s", (tz,))
    return counts


# --------------------------------------------------------------------------- CLI


def _run_script(conn: Any, sql: str) -> None:
    """Run a multi-statement script such as schema.sql (needs CLIENT.MULTI_STATEMENTS)."""
    with conn.cursor() as cur:
        # The server splits the script, so comments and quoting work as in the mariadb client.
        cur.execute(sql)
        while cur.nextset():
            pass
    conn.commit()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m provhad.sample``: load a sample network into a database (demo, bench)."""
    defaults = SampleSpec()
    p = argparse.ArgumentParser(prog="python -m provhad.sample", description=main.__doc__)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=3306)
    p.add_argument("--socket", help="unix socket (instead of host/port)")
    p.add_argument("--user", default="root")
    p.add_argument(
        "--password", default=os.environ.get("MYSQL_PWD", ""), help="default: $MYSQL_PWD"
    )
    p.add_argument("--database", required=True)
    p.add_argument("--schema", help="SQL file to run first, e.g. tests/fixtures/schema.sql")
    p.add_argument("--modems", type=int, default=defaults.modems)
    p.add_argument("--modems-per-cmts", type=int, default=defaults.modems_per_cmts)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    try:
        spec = SampleSpec(modems=args.modems, modems_per_cmts=args.modems_per_cmts, seed=args.seed)
        conn = pymysql.connect(
            host=args.host,
            port=args.port,
            unix_socket=args.socket,
            user=args.user,
            password=args.password,
            database=args.database,
            charset="utf8mb4",
            local_infile=True,
            client_flag=CLIENT.MULTI_STATEMENTS,  # for --schema
        )
    except (ValueError, pymysql.MySQLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.schema:
            with open(args.schema, encoding="utf-8") as f:
                _run_script(conn, f.read())
        start = time.monotonic()
        counts = load(conn, spec)
        elapsed = time.monotonic() - start
    except (OSError, ValueError, RuntimeError, pymysql.MySQLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()
    for table, n in counts.items():
        print(f"{table:<11} {n:>9}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"loaded in {elapsed:.1f} s, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
