"""DHCPv6 for Kea: v6 rows -> model6 -> gateways6.conf, gateways6/<id>.conf, hosts6.conf,
checked by the real ``kea-dhcp6 -t`` (Debian package kea-dhcp6-server)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest

from provhad import config, db, generations, model, model6, validate
from provhad.plan import make_plan
from provhad.render import KEA6, HostFacts, RenderedSet, Renderer
from provhad.snapshot import Row, Snapshot
from provhad.testbed import ScratchDatabase
from tests import rows
from tests.test_cli_render import insert, seed_small
from tests.test_watch import db_config

KEA = shutil.which("kea-dhcp6") or "/usr/sbin/kea-dhcp6"
needs_kea = pytest.mark.skipif(not Path(KEA).exists(), reason="kea-dhcp6 not installed")
FACTS = HostFacts(now=dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC), fqdn="slave.test", omapi=None)


def pool6(id: int, netgw_id: int, n: int, **kw: Any) -> Row:
    """A v6 pool as the NMS Prime GUI stores it (MariaDB era: net and '/NN' apart)."""
    row: Row = {
        "id": id,
        "netgw_id": netgw_id,
        "type": "CPEPub",
        "net": f"2001:db8:{n}::",
        "netmask": "/64",
        "ip_pool_start": f"2001:db8:{n}::100",
        "ip_pool_end": f"2001:db8:{n}::1ff",
        "router_ip": f"2001:db8:{n}::1",
        "dns1_ip": "2001:db8::53",
        "dns2_ip": None,
        "dns3_ip": "2001:db8::54",
        "prefix": f"2001:db8:{n}00::",
        "prefix_len": "/40",
        "delegated_len": "/56",
        "optional": None,
    }
    row.update(kw)
    return row


def ep6(id: int, n: int, host: int, **kw: Any) -> Row:
    row: Row = {
        "id": id,
        "hostname": f"ep6-{id}",
        "mac": f"00:11:22:33:{host >> 8:02x}:{host & 255:02x}",
        "ip": f"2001:db8:{n}::{host:x}",
        "prefix": f"2001:db8:{n}00:{host:x}00::/56",
    }
    row.update(kw)
    return row


def snap6(pools: list[Row], endpoints: list[Row]) -> Snapshot:
    return dataclasses.replace(rows.small(), ippool6=pools, endpoint6=endpoints)


def renderer(root: Path | str = "/", **paths: str) -> Renderer:
    cfg = config.Config().with_root(str(root))
    cfg = dataclasses.replace(
        cfg,
        render=dataclasses.replace(cfg.render, dhcpv6=True),
        paths=dataclasses.replace(cfg.paths, **paths),
        validate=dataclasses.replace(cfg.validate, kea_dhcp6=KEA),
    )
    return Renderer(cfg)


def kea_files(snap: Snapshot, root: Path | str = "/") -> dict[str, bytes]:
    out = renderer(root).render(model.build(snap, "slave"), FACTS, v6=model6.build(snap))
    return {p: f.data for p, f in out.files.items() if f.service == KEA6}


# --- format -------------------------------------------------------------------------------------


def test_one_subnet_is_byte_for_byte_upstreams_layout() -> None:
    """Upstream's MariaDB-era NetGw::makeDhcp6Conf / makeIncludesV6 / Endpoint::makeDhcp6All,
    spelt out by hand: no trailing newlines, tabs, the space in '"pd-pools" :'."""
    files = kea_files(snap6([pool6(11, 1, 1)], [ep6(200100, 1, 5)]))
    assert files["/etc/kea/gateways6.conf"] == (
        b'<?include "/etc/kea/gateways6/1.conf"?>,\n<?include "/etc/kea/gateways6/2.conf"?>'
    )
    assert files["/etc/kea/gateways6/2.conf"] == b'{\n\t"name": "2"\n}'
    assert files["/etc/kea/gateways6/1.conf"] == (
        b'{\n\t"name": "1",\n\t"subnet6": [\n'
        b'\t\t{\n\t\t\t"subnet": "2001:db8:1::/64",'
        b'\n\t\t\t"pools": [ { "pool": "2001:db8:1::100-2001:db8:1::1ff" } ]'
        b',\n\t\t\t"relay": { "ip-addresses": [ "2001:db8:1::1" ] }'
        b',\n\t\t\t"pd-pools" : [{\n\t\t\t\t"prefix": "2001:db8:100::"'
        b',\n\t\t\t\t"prefix-len": 40'
        b',\n\t\t\t\t"delegated-len": 56\n\t\t\t}]'
        b',\n\t\t\t"option-data": [{\n\t\t\t\t"name": "dns-servers"'
        b',\n\t\t\t\t"data": "2001:db8::53, 2001:db8::54"\n\t\t\t\n\t\t\t}]'
        b',\n\t\t\t<?include "/etc/kea/hosts6.conf"?>'
        b"\n\t\t}\n\t]\n}"
    )
    assert files["/etc/kea/hosts6.conf"] == (
        b'"reservations": [\n{ "hw-address": "00:11:22:33:00:05", "ip-addresses": '
        b'[ "2001:db8:1::5" ], "prefixes": [ "2001:db8:100:500::/56" ], '
        b'"hostname": "ep6-200100" }\n]'
    )


def test_empty_v6_set_and_no_relay() -> None:
    files = kea_files(snap6([pool6(11, 1, 1, router_ip=None, dns1_ip="", dns3_ip=None)], []))
    gw = files["/etc/kea/gateways6/1.conf"]
    assert b'"relay"' not in gw and b'"option-data"' not in gw
    assert files["/etc/kea/hosts6.conf"] == b'"reservations": [\n]'


def test_off_by_default_and_without_a_v6_model() -> None:
    snap = snap6([pool6(11, 1, 1)], [])
    cfg = config.Config()
    assert not cfg.render.dhcpv6
    plain = Renderer(cfg).render(model.build(snap, "slave"), FACTS, v6=model6.build(snap))
    assert not plain.by_service(KEA6) and plain.kea_dir == ""
    assert not renderer().render(model.build(snap, "slave"), FACTS).by_service(KEA6)


def test_paths_follow_root_and_kea_dir(tmp_path: Path) -> None:
    out = renderer(tmp_path, kea_dir="/opt/kea").render(
        model.build(rows.small(), "slave"), FACTS, v6=model6.build(snap6([pool6(11, 1, 1)], []))
    )
    assert out.kea_dir == f"{tmp_path}/opt/kea"
    gateways = out.files[f"{tmp_path}/opt/kea/gateways6.conf"].data
    assert f'<?include "{tmp_path}/opt/kea/gateways6/1.conf"?>'.encode() in gateways


# --- bad rows -----------------------------------------------------------------------------------

BAD_POOLS = [
    ({"net": "2001:db8:1::", "netmask": "64"}, "netmask '64' is not '/NN'"),
    ({"netmask": "/129"}, "netmask '/129' is not an IPv6 prefix length"),
    ({"net": "10.0.0.0"}, "net '10.0.0.0' is not an IPv6 address"),
    ({"net": "2001:db8:1::1"}, "has host bits set"),
    ({"ip_pool_end": "2001:db8:2::1"}, "ip_pool_end 2001:db8:2::1 is not inside 2001:db8:1::/64"),
    ({"ip_pool_start": "2001:db8:1::300"}, "is above ip_pool_end"),
    ({"router_ip": '1::1" ] }, "x": ["'}, "router_ip '1::1\" ] }"),
    ({"dns3_ip": "8.8.8.8"}, "dns3_ip '8.8.8.8' is not an IPv6 address"),
    ({"prefix": None}, "prefix is empty"),
    ({"prefix_len": "/40x"}, "prefix_len '/40x' is not an IPv6 prefix length"),
    ({"prefix": "2001:db8:100::1"}, "has host bits set for prefix_len 40"),
    ({"delegated_len": "/32"}, "delegated_len 32 is shorter than prefix_len 40"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_POOLS)
def test_bad_pool_rows_are_left_out_with_table_id_reason(change: Row, reason: str) -> None:
    m6 = model6.build(snap6([pool6(11, 1, 1, **change), pool6(12, 1, 3)], []))
    assert [p.id for p in m6.pools] == [12]
    [reject] = m6.rejects
    assert (reject.table, reject.id) == ("ippool", 11) and reason in reject.reason


BAD_ENDPOINTS = [
    ({"mac": "00:11:22:33:66"}, "is not a MAC address"),
    ({"hostname": 'x", "ip-addresses": ["::1'}, "is not a valid DNS label"),
    ({"ip": "2001:db8:1::500/64"}, "ip '2001:db8:1::500/64' is not an IPv6 address"),
    ({"prefix": None}, "prefix is empty"),
    ({"prefix": "2001:db8:100:500::"}, "is not an IPv6 prefix"),
    ({"ip": "2001:db8:9::5"}, "ip 2001:db8:9::5 is inside no v6 pool's subnet"),
    ({"mac": "00:11:22:33:00:01"}, "mac 00:11:22:33:00:01 is already reserved by endpoint id 1"),
    ({"ip": "2001:db8:1::1"}, "ip 2001:db8:1::1 is already reserved by endpoint id 1"),
    ({"hostname": "EP6-1"}, "hostname ep6-1 is already reserved by endpoint id 1"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_ENDPOINTS)
def test_bad_endpoint_rows_are_left_out_with_table_id_reason(change: Row, reason: str) -> None:
    m6 = model6.build(snap6([pool6(11, 1, 1)], [ep6(1, 1, 1), ep6(2, 1, 2, **change)]))
    assert [r.id for r in m6.reservations] == [1]
    assert [(r.table, r.id) for r in m6.rejects] == [("endpoint", 2)]
    assert reason in m6.rejects[0].reason


def test_duplicate_subnet_and_optional_and_foreign_gateway() -> None:
    m6 = model6.build(
        snap6(
            [
                pool6(11, 1, 1, optional='"valid-lifetime": 1'),
                pool6(12, 2, 1),
                pool6(13, 3, 4),  # NetGw 3 is no cmts: not served, as upstream
            ],
            [],
        )
    )
    assert [p.id for p in m6.pools] == [11]
    assert [str(r) for r in m6.rejects] == [
        "ippool id 11: optional left out: raw Kea JSON is never copied",
        "ippool id 12: subnet 2001:db8:1::/64 is already used by ippool id 11",
    ]


# --- the real kea-dhcp6 -------------------------------------------------------------------------


def publish_check(tmp_path: Path, snap: Snapshot) -> validate.Validation:
    """Stage the set under ``tmp_path`` as the cycle does, then run the real validators."""
    r = renderer(tmp_path)
    rendered = r.render(model.build(snap, "slave"), FACTS, v6=model6.build(snap))
    staged = generations.stage(make_plan(rendered, {}, []), rendered)
    try:
        return validate.run(staged, r.config.validate, {KEA6})
    finally:
        generations.discard(staged)


@needs_kea
def test_kea_accepts_the_slave_set_with_one_subnet(tmp_path: Path) -> None:
    snap = snap6([pool6(11, 1, 1)], [ep6(1, 1, 5), ep6(2, 1, 6)])
    assert model6.build(snap).shared_hosts
    check = publish_check(tmp_path, snap)
    assert check.checked == ["kea-dhcp6 -t"] and check.ok, check.problems
    assert not list((tmp_path / "etc/kea").rglob("*.provhad-*"))  # check copies are private


@needs_kea
def test_upstreams_shared_hosts6_breaks_with_two_subnets(tmp_path: Path) -> None:
    """Kea rejects a reservation outside its subnet, and upstream includes hosts6.conf in
    every subnet: with two subnets the slave writes each subnet's reservations inline."""
    snap = snap6([pool6(11, 1, 1), pool6(12, 2, 2)], [ep6(1, 1, 5), ep6(2, 2, 6)])
    m6 = model6.build(snap)
    assert not m6.shared_hosts
    assert [[r.id for r in p.reservations] for p in m6.pools] == [[1], [2]]
    files = kea_files(snap, tmp_path)
    assert b"hosts6.conf" not in files[f"{tmp_path}/etc/kea/gateways6/1.conf"]
    assert publish_check(tmp_path, snap).ok

    # upstream's layout for the same rows: hosts6.conf (every reservation) in every subnet
    everywhere = tuple(
        dataclasses.replace(g, pools=tuple(
            dataclasses.replace(p, reservations=m6.reservations) for p in g.pools
        ))
        for g in m6.gateways
    )  # fmt: skip
    upstream = renderer(tmp_path).render(
        model.build(snap, "slave"), FACTS, v6=dataclasses.replace(m6, gateways=everywhere)
    )
    assert b"hosts6.conf" in upstream.files[f"{tmp_path}/etc/kea/gateways6/1.conf"].data
    problems = validate.check_kea(upstream, kea_validate())
    assert problems and "is not within the IPv6 subnet" in problems[0].message


def kea_validate() -> config.ValidateConfig:
    return dataclasses.replace(config.ValidateConfig(), kea_dhcp6=KEA)


@needs_kea
def test_a_rejected_file_is_named_by_its_live_path_and_line(tmp_path: Path) -> None:
    rendered = renderer(tmp_path).render(
        model.build(rows.small(), "slave"), FACTS, v6=model6.build(snap6([pool6(11, 1, 1)], []))
    )
    path = f"{tmp_path}/etc/kea/gateways6/1.conf"
    bad = rendered.files[path].data.replace(b'"prefix-len": 40', b'"prefix-len": "forty"')
    broken = RenderedSet(
        {**rendered.files, path: dataclasses.replace(rendered.files[path], data=bad)},
        rendered.dhcp_dir,
        rendered.cmts_dir,
        rendered.kea_dir,
    )
    [problem] = validate.check_kea(broken, kea_validate())
    assert problem.service == KEA6 and problem.path == path and problem.line == 10
    assert "provhad-kea6-" not in problem.message and str(problem).startswith(f"kea6: {path} line")


@needs_kea
def test_the_live_global6_conf_is_checked_too(tmp_path: Path) -> None:
    """upstream's static global6.conf (lifetimes) is part of what Kea reads."""
    globals6 = tmp_path / "etc/kea/global6.conf"
    globals6.parent.mkdir(parents=True)
    globals6.write_text('"preferred-lifetime": "long",\n"valid-lifetime": 86400')
    check = publish_check(tmp_path, snap6([pool6(11, 1, 1)], []))
    [problem] = check.problems
    assert (problem.path, problem.line) == (str(globals6), 1) and "expecting integer" in str(
        problem
    )
    globals6.write_text('"preferred-lifetime": 64800,\n"valid-lifetime": 86400')
    assert publish_check(tmp_path, snap6([pool6(11, 1, 1)], [])).ok


def test_a_missing_kea_dhcp6_rejects_the_set(tmp_path: Path) -> None:
    r = renderer(tmp_path)
    snap = snap6([pool6(11, 1, 1)], [])
    rendered = r.render(model.build(snap, "slave"), FACTS, v6=model6.build(snap))
    vcfg = dataclasses.replace(r.config.validate, kea_dhcp6=str(tmp_path / "no-kea"))
    [problem] = validate.check_kea(rendered, vcfg)
    assert "not found" in problem.message


# --- the database -------------------------------------------------------------------------------


async def test_v6_rows_are_read_and_watched(nmsdb: ScratchDatabase) -> None:
    seed_small(nmsdb)
    insert(nmsdb, "ippool", pool6(21, 1, 1) | {"version": "6", "active": 1})
    insert(nmsdb, "ippool", pool6(22, 1, 2) | {"version": "6", "deleted_at": "2021-01-01"})
    insert(nmsdb, "endpoint", ep6(200100, 1, 5) | {"version": "6", "modem_id": 100000})
    insert(nmsdb, "endpoint", ep6(200101, 1, 6, mac=None) | {"version": "6", "modem_id": 100000})
    cfg = db_config(nmsdb)
    snap = await db.read_snapshot(cfg)
    assert [r["id"] for r in snap.ippool6] == [21]
    assert [r["id"] for r in snap.endpoint6] == [200100]  # upstream: MAC and IP not NULL
    assert all(r["id"] != 21 for r in snap.ippool)
    m6 = model6.build(snap)
    assert [p.id for p in m6.pools] == [21] and not m6.rejects

    conn = await db.connect(cfg, db.Node(nmsdb.host, nmsdb.port))
    try:
        before = await db.fingerprints(conn)
        with nmsdb.admin.cursor() as cur:
            cur.execute("UPDATE ippool SET delegated_len = '/60' WHERE id = 21")
            cur.execute("UPDATE endpoint SET prefix = '2001:db8:100:700::/56' WHERE id = 200100")
        after = await db.fingerprints(conn)
    finally:
        conn.close()
    assert before["ippool"] != after["ippool"] and before["endpoint"] != after["endpoint"]


@needs_kea
def test_the_cycle_publishes_kea_files_in_the_same_set(tmp_path: Path) -> None:
    """cycle.apply renders, validates and swaps the Kea files with the v4 set; the service
    to restart is named only when they change; bad v6 rows are reported with the others."""
    from provhad import cycle

    cfg = renderer(tmp_path).config
    snap = snap6([pool6(11, 1, 1), pool6(12, 1, 2, ip_pool_start="zz")], [ep6(1, 1, 5)])
    first = cycle.apply(cfg, snap, FACTS)
    assert first.ok, first.error
    assert KEA6 in first.services and "kea-dhcp6 -t" in first.validated
    assert (tmp_path / "etc/kea/hosts6.conf").exists()
    assert any(r.table == "ippool" and r.id == 12 for r in first.model.rejects)  # type: ignore[union-attr]
    again = cycle.apply(cfg, dataclasses.replace(snap, modem=snap.modem[:-1]), FACTS)
    assert again.ok and KEA6 not in again.services  # v4 changed, Kea's files did not
