"""The sample network: loads completely, is deterministic and its addresses are consistent."""

from __future__ import annotations

import base64
import itertools
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from provhad import sample
from provhad.sample import (
    MODEM_ID0,
    SampleSpec,
    dns_secret,
    generate,
    load,
    netgw_of_modem,
)
from provhad.testbed import MariaDB, ScratchDatabase

SPEC = SampleSpec(modems=3000, modems_per_cmts=1000, seed=7)
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

Row = dict[str, Any]


def _materialise(spec: SampleSpec) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    return {t: (cols, list(rows)) for t, (cols, rows) in generate(spec).items()}


@pytest.fixture(scope="module")
def expected() -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    return _materialise(SPEC)


@pytest.fixture(scope="module")
def db(mariadb: MariaDB, schema_sql: Path) -> Iterator[tuple[ScratchDatabase, dict[str, int]]]:
    """SPEC loaded once (LOAD DATA LOCAL INFILE path) for all read-only tests here."""
    via_infile: list[str] = []
    real = sample._load_data

    def spy(cur: Any, table: str, columns: list[str], path: str) -> int:
        via_infile.append(table)
        return real(cur, table, columns, path)

    with (
        mariadb.scratch(schema_sql, prefix="sample") as scratch,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(sample, "_load_data", spy)
        conn = mariadb.admin(scratch.name, local_infile=True)
        try:
            counts = load(conn, SPEC)
        finally:
            conn.close()
        # provha twice: the empty probe file, then its row.
        assert via_infile == ["provha", *counts], "LOAD DATA was not used for every table"
        yield scratch, counts


def _query(scratch: ScratchDatabase, sql: str) -> list[Row]:
    with scratch.admin.cursor(pymysql.cursors.DictCursor) as cur:
        # load() stored UTC; read it back the same way.
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute(sql)
        return list(cur.fetchall())


def _network(pool: Row) -> IPv4Network:
    mask = pool["netmask"]
    prefix = mask[1:] if mask.startswith("/") else mask
    return IPv4Network(f"{pool['net']}/{prefix}")  # strict: net must be the network address


def _v4_pools(scratch: ScratchDatabase) -> list[Row]:
    return _query(scratch, "SELECT * FROM ippool WHERE version = '4' ORDER BY id")


# --------------------------------------------------------------------------- generate()


def test_generate_is_deterministic(expected: dict[str, Any]) -> None:
    assert _materialise(SPEC) == expected
    other = _materialise(SampleSpec(modems=3000, modems_per_cmts=1000, seed=8))
    assert other["modem"][1] != expected["modem"][1]
    assert other["provha"][1] != expected["provha"][1]


def test_columns_exist_in_schema(schema_sql: Path, expected: dict[str, Any]) -> None:
    schema = schema_sql.read_text()
    for table, (columns, rows) in expected.items():
        body = schema.split(f"CREATE TABLE {table} (", 1)[1].split(") ENGINE", 1)[0]
        declared = {line.split()[0] for line in body.splitlines() if line.strip()}
        assert set(columns) <= declared, table
        assert all(len(row) == len(columns) for row in rows), table


def test_spec_validation_and_big_cmts() -> None:
    with pytest.raises(ValueError):
        SampleSpec(mta_share=1.5)
    with pytest.raises(ValueError):
        SampleSpec(modems_per_cmts=0)
    # One CMTS with 12k modems needs several CM (and CPEPriv) pools.
    cols, rows = generate(SampleSpec(modems=12_000, modems_per_cmts=20_000))["ippool"]
    pools = [dict(zip(cols, r, strict=True)) for r in rows]
    cm = [p for p in pools if p["netgw_id"] == 1 and p["type"] == "CM" and p["version"] == "4"]
    assert len(cm) >= 3
    assert SampleSpec(modems=0).cmts_count == 1


def test_netgw_of_modem_spreads_evenly() -> None:
    per_cmts = Counter(netgw_of_modem(SPEC, MODEM_ID0 + i) for i in range(SPEC.modems))
    assert per_cmts == {1: 1000, 2: 1000, 3: 1000}
    with pytest.raises(ValueError):
        netgw_of_modem(SPEC, MODEM_ID0 + SPEC.modems)


# --------------------------------------------------------------------------- load()


def test_counts_match_generate(
    db: tuple[ScratchDatabase, dict[str, int]], expected: dict[str, Any]
) -> None:
    scratch, counts = db
    assert counts == {t: len(rows) for t, (_, rows) in expected.items()}
    for table, n in counts.items():
        assert _query(scratch, f"SELECT COUNT(*) AS n FROM `{table}`")[0]["n"] == n, table


def test_database_holds_exactly_the_generated_rows(
    db: tuple[ScratchDatabase, dict[str, int]], expected: dict[str, Any]
) -> None:
    """Checks the TSV escaping: NULL vs '', newlines, tabs and quotes survive LOAD DATA."""
    scratch, _ = db
    with scratch.admin.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        for table, (columns, rows) in expected.items():
            cur.execute(f"SELECT {', '.join(columns)} FROM `{table}` ORDER BY id")
            assert list(cur.fetchall()) == rows, table


def test_insert_fallback_loads_the_same_rows(
    mariadb: MariaDB, schema_sql: Path, expected: dict[str, Any]
) -> None:
    small = SampleSpec(modems=300, modems_per_cmts=100, seed=7)
    with mariadb.scratch(schema_sql, prefix="sample") as scratch:
        conn = mariadb.admin(scratch.name)  # no local_infile: multi-row INSERTs
        try:
            counts = load(conn, small)
            with pytest.raises(ValueError, match="not empty"):
                load(conn, small)
        finally:
            conn.close()
        want = _materialise(small)
        assert counts == {t: len(rows) for t, (_, rows) in want.items()}
        with scratch.admin.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
            cur.execute(f"SELECT {', '.join(want['modem'][0])} FROM modem ORDER BY id")
            assert list(cur.fetchall()) == want["modem"][1]


def test_pools_are_consistent_and_disjoint(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    pools = _v4_pools(scratch)
    nets = []
    for p in pools:
        net = _network(p)
        nets.append(net)
        start, end = IPv4Address(p["ip_pool_start"]), IPv4Address(p["ip_pool_end"])
        router = IPv4Address(p["router_ip"])
        hosts = (net.network_address + 1, net.broadcast_address - 1)
        assert hosts[0] <= start <= end <= hosts[1], p
        assert router == hosts[0] and not start <= router <= end, p
        assert IPv4Address(p["broadcast_ip"]) == net.broadcast_address, p
        assert p["dns1_ip"] == "172.20.0.1"
    # Every pool, live or deleted, of any netgw: no two overlap.
    ordered = sorted(nets)
    for a, b in itertools.pairwise(ordered):
        assert not a.overlaps(b), (a, b)
    masks = Counter(p["netmask"].startswith("/") for p in pools)
    assert masks[True] >= 1 and masks[False] > masks[True]
    assert sum(1 for p in pools if p["active"] == 0) == SPEC.inactive_pools
    assert any(p["optional"] for p in pools)
    assert len(_query(scratch, "SELECT id FROM ippool WHERE version = '6'")) == 2
    by_cmts = Counter(
        (p["netgw_id"], p["type"]) for p in pools if p["deleted_at"] is None and p["netgw_id"] <= 3
    )
    assert {k for k in by_cmts} == {
        (gw, t) for gw in (1, 2, 3) for t in ("CM", "CPEPriv", "MTA", "CPEPub")
    }


def test_netgws(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    gws = _query(scratch, "SELECT * FROM netgw ORDER BY id")
    live_cmts = [g for g in gws if g["type"] == "cmts" and g["deleted_at"] is None]
    assert [g["hostname"] for g in live_cmts] == ["cmts-01", "cmts-02", "cmts-03"]
    assert {g["series"] for g in live_cmts} == {"Cisco uBR10k", "Casa C100G", "Arris E6000"}
    assert [g["type"] for g in gws if g["type"] != "cmts"] == ["bras"]
    deleted = [g for g in gws if g["deleted_at"] is not None]
    assert len(deleted) == 1 and deleted[0]["type"] == "cmts"
    pools = _query(scratch, f"SELECT id FROM ippool WHERE netgw_id = {deleted[0]['id']}")
    assert pools  # the deleted CMTS still has pools
    assert len(_query(scratch, "SELECT id FROM ippool WHERE deleted_at IS NOT NULL")) == 1


def test_fixed_endpoint_ips(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    pub = [p for p in _v4_pools(scratch) if p["type"] == "CPEPub" and p["deleted_at"] is None]
    fixed = _query(scratch, "SELECT * FROM endpoint WHERE fixed_ip = 1 AND version = '4'")
    assert all("." in e["ip"] for e in fixed)
    assert fixed
    ips = [e["ip"] for e in fixed]
    assert len(set(ips)) == len(ips)
    for e in fixed:
        ip, gw = IPv4Address(e["ip"]), netgw_of_modem(SPEC, e["modem_id"])
        assert any(
            p["netgw_id"] == gw
            and IPv4Address(p["ip_pool_start"]) <= ip <= IPv4Address(p["ip_pool_end"])
            for p in pub
        ), e
    dynamic = _query(scratch, "SELECT * FROM endpoint WHERE fixed_ip = 0")
    assert dynamic and all(e["ip"] is None for e in dynamic)
    assert all(re.fullmatch(r"[a-z0-9-]{1,63}", e["hostname"]) for e in fixed + dynamic)
    six = _query(scratch, "SELECT * FROM endpoint WHERE version = '6'")
    assert six and all(e["prefix"] and ":" in e["ip"] for e in six)


def test_macs(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    modems = _query(scratch, "SELECT id, mac FROM modem")
    bad = [m["mac"] for m in modems if not m["mac"] or m["mac"].lower().startswith("ff:")]
    assert None in bad and "" in bad and any(m and m.startswith("ff:") for m in bad)
    good = [m["mac"] for m in modems if m["mac"] not in bad]
    assert len(good) == SPEC.modems - len(bad)
    mtas = [r["mac"] for r in _query(scratch, "SELECT mac FROM mta WHERE is_dummy = 0")]
    eps = [r["mac"] for r in _query(scratch, "SELECT mac FROM endpoint WHERE mac IS NOT NULL")]
    everything = good + mtas + eps
    assert all(MAC.fullmatch(mac) for mac in everything)
    assert len(set(everything)) == len(everything)
    # Endpoints without a MAC are matched by their modem's MAC (agent.remote-id): valid ones.
    remote = _query(
        scratch,
        "SELECT m.mac FROM endpoint e JOIN modem m ON m.id = e.modem_id WHERE e.mac IS NULL",
    )
    assert remote and all(MAC.fullmatch(r["mac"]) for r in remote)


def _about(actual: object, share: float, of: int) -> None:
    want = share * of
    assert abs(int(str(actual)) - want) <= max(2, 0.1 * want), (actual, want)


def test_shares(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    n = SPEC.modems
    (m,) = _query(
        scratch,
        "SELECT SUM(public) AS public, SUM(internet_access = 0) AS blocked,"
        " SUM(deleted_at IS NOT NULL) AS deleted,"
        " SUM(mac IS NULL OR mac = '' OR mac LIKE 'ff:%') AS bad FROM modem",
    )
    _about(m["public"], SPEC.public_share, n)
    _about(m["blocked"], SPEC.blocked_share, n)
    _about(m["deleted"], SPEC.deleted_share, n)
    _about(m["bad"], SPEC.bad_mac_share, n)
    per_modem = _query(
        scratch, "SELECT modem_id, COUNT(*) AS n FROM mta WHERE is_dummy = 0 GROUP BY modem_id"
    )
    _about(len(per_modem), SPEC.mta_share, n)
    assert {r["n"] for r in per_modem} == {1, 2}
    (mta,) = _query(
        scratch,
        "SELECT COUNT(*) AS n, SUM(deleted_at IS NOT NULL) AS deleted,"
        " SUM(type = 'packetcable') AS pc FROM mta WHERE is_dummy = 0",
    )
    _about(mta["deleted"], SPEC.deleted_share, int(mta["n"]))
    assert 0 < mta["pc"] < mta["n"]
    dummies = _query(scratch, "SELECT * FROM mta WHERE is_dummy = 1")
    assert len(dummies) == 2 and all(d["deleted_at"] and d["mac"] is None for d in dummies)
    (ep,) = _query(
        scratch,
        "SELECT SUM(version = '4') AS v4, SUM(fixed_ip AND version = '4') AS fixed,"
        " SUM(deleted_at IS NOT NULL) AS deleted, SUM(mac IS NULL) AS nomac FROM endpoint",
    )
    _about(ep["v4"], SPEC.endpoint_share, n)
    _about(ep["fixed"], SPEC.endpoint_share / 2, n)
    assert ep["deleted"] >= 1 and ep["nomac"] >= 1


def test_config_rows(db: tuple[ScratchDatabase, dict[str, int]]) -> None:
    scratch, _ = db
    (ha,) = _query(scratch, "SELECT * FROM provha")
    (base,) = _query(scratch, "SELECT * FROM provbase")
    (voip,) = _query(scratch, "SELECT * FROM provvoip")
    assert (ha["master"], ha["slaves"]) == ("172.20.0.1", "172.20.0.2")
    secrets = (ha["master_dns_password"], ha["slave_dns_password"])
    assert secrets == (dns_secret(SPEC.seed, "master"), dns_secret(SPEC.seed, "slave"))
    assert secrets[0] != secrets[1]
    for secret in secrets:
        assert len(secret) == 24 and secret.endswith("==")
        assert len(base64.b64decode(secret, validate=True)) == 16
    assert base["dns_password"] == secrets[0]
    assert (base["provisioning_server"], base["domain_name"]) == ("172.20.0.1", "nmsprime.test")
    assert (base["dhcp_def_lease_time"], base["dhcp_max_lease_time"]) == (86400, 172800)
    assert voip["mta_domain"] == "mta.nmsprime.test"
    assert _query(scratch, "SELECT device FROM configfile WHERE deleted_at IS NULL")


# --------------------------------------------------------------------------- dhcpd -t


def _dhcpd_conf(scratch: ScratchDatabase) -> str:
    """A minimal rendering in the shape of upstream's cmts_gws/*.conf plus host entries."""
    gws = _query(scratch, "SELECT * FROM netgw WHERE type = 'cmts' AND deleted_at IS NULL")
    pools = [p for p in _v4_pools(scratch) if p["deleted_at"] is None]
    fixed = {
        IPv4Address(e["ip"])
        for e in _query(scratch, "SELECT ip FROM endpoint WHERE fixed_ip = 1 AND ip IS NOT NULL")
        if e["ip"] and e["ip"].count(".") == 3
    }
    out = ["ddns-update-style none;", 'option domain-name "nmsprime.test";']
    for gw in gws:
        out.append(f'shared-network "{gw["hostname"]}" {{')
        for p in (p for p in pools if p["netgw_id"] == gw["id"]):
            net = _network(p)
            dns = ", ".join(p[k] for k in ("dns1_ip", "dns2_ip", "dns3_ip") if p[k])
            ranges, lo = [], int(IPv4Address(p["ip_pool_start"]))
            for hole in sorted(int(a) for a in fixed if a in net):  # upstream cuts these out
                if lo < hole:
                    ranges.append((lo, hole - 1))
                lo = max(lo, hole + 1)
            ranges.append((lo, int(IPv4Address(p["ip_pool_end"]))))
            out += [
                f"subnet {net.network_address} netmask {net.netmask} {{",
                f"option routers {p['router_ip']};",
                f"option broadcast-address {p['broadcast_ip']};",
                f"option domain-name-servers {dns} ;",
                "pool {",
                *(f"range {IPv4Address(a)} {IPv4Address(b)};" for a, b in ranges if a <= b),
                "deny all clients;" if not p["active"] else "allow unknown-clients;",
                "}",
                p["optional"] or "",
                "}",
                f"subnet {p['router_ip']} netmask 255.255.255.255 {{ allow leasequery; }}",
            ]
        out.append("}")
    for m in _query(scratch, "SELECT hostname, mac FROM modem WHERE deleted_at IS NULL"):
        if m["mac"] and not m["mac"].lower().startswith("ff:"):
            out.append(f"host {m['hostname']} {{ hardware ethernet {m['mac']}; }}")
    endpoints = _query(
        scratch,
        "SELECT e.*, m.mac AS modemmac FROM endpoint e JOIN modem m ON m.id = e.modem_id"
        " WHERE e.version = '4' AND e.deleted_at IS NULL",
    )
    for e in endpoints:
        ident = (
            f"hardware ethernet {e['mac']} ;"
            if e["mac"]
            else f"host-identifier option agent.remote-id {e['modemmac']} ;"
        )
        address = f" fixed-address {e['ip']};" if e["fixed_ip"] and e["ip"] else ""
        out.append(f"host {e['hostname']} {{ {ident}{address} }}")
    return "\n".join(out) + "\n"


@pytest.mark.skipif(
    shutil.which("dhcpd", path="/usr/sbin:/usr/bin:/sbin") is None, reason="no dhcpd"
)
def test_dhcpd_accepts_the_addresses(
    db: tuple[ScratchDatabase, dict[str, int]], tmp_path: Path
) -> None:
    scratch, _ = db
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(_dhcpd_conf(scratch))
    dhcpd = shutil.which("dhcpd", path="/usr/sbin:/usr/bin:/sbin")
    assert dhcpd
    result = subprocess.run(
        [dhcpd, "-4", "-t", "-cf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
