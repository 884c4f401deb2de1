"""Parity with upstream: provhad's files against tests/upstream.py's reference of NMS Prime 3.1.0.

One snapshot holds every case of issue 11 (odd endpoint names, pools with no type, start > end,
a CPEPub pool whose every address is fixed, two overlapping pools, a pool naming the master as
DNS, a multi-line optional, a whitespace MAC, max_cpe). The pools must be identical; every other
difference is one listed in docs/files.md, and dhcpd accepts the slave's set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import ipaddress
import re
import tempfile

from provhad import config, cycle, model
from provhad.render import HostFacts, Renderer
from provhad.snapshot import Row, Snapshot
from tests import rows, upstream

FACTS = HostFacts(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "nmsslave.nmsprime.test", None)
OWN, PEER = "172.20.0.2", "172.20.0.1"
OVERLAP_NEW = 8  # created after pool 1, onto its addresses: the master's dhcpd refuses the set


def snapshot() -> Snapshot:
    base = rows.small()
    # dotted masks: upstream writes a '/NN' mask verbatim, which dhcpd refuses (docs/files.md)
    pools: list[Row] = [
        dict(p, updated_at="2024-01-01 00:00:00", netmask=str(model_mask(str(p["netmask"]))))
        for p in base.ippool
    ]
    pools += [
        {  # type NULL
            **rows.pool(
                6, 2, "", "100.65.0.0", "255.255.255.0", "100.65.0.10", "100.65.0.20", "100.65.0.1"
            ),
            "type": None,
        },
        rows.pool(
            7,
            2,
            "",
            "100.66.0.0",
            "255.255.255.0",
            "100.66.0.200",
            "100.66.0.20",
            "100.66.0.1",
            dns1_ip="9.9.9.9",
            dns2_ip="172.20.0.1",
        ),
        rows.pool(
            OVERLAP_NEW,
            2,
            "CM",
            "10.0.0.0",
            "255.255.255.0",
            "10.0.0.100",
            "10.0.0.120",
            "10.0.0.1",
            updated_at="2024-06-01 00:00:00",
        ),
        rows.pool(
            9,
            2,
            "CPEPub",
            "198.19.0.0",
            "255.255.255.0",
            "198.19.0.10",
            "198.19.0.12",
            "198.19.0.1",
            dns1_ip="8.8.8.8",
            optional='option domain-name "a.example";\n\tddns-updates on;',
        ),
        rows.pool(10, 2, "CM", "10.1.0.0", "255.255.255.0", "10.1.0.5", "10.1.0.5", "10.1.0.1"),
    ]
    endpoints: list[Row] = [
        *base.endpoint,
        {
            "id": 200010,
            "hostname": "pc-",
            "mac": "00:11:22:33:66:10",
            "fixed_ip": 1,
            "ip": "198.18.0.11",
            "modemmac": "00:11:22:33:44:00",
        },
        {
            "id": 200011,
            "hostname": "-lab7",
            "mac": None,
            "fixed_ip": 1,
            "ip": "198.18.0.20",
            "modemmac": "00:11:22:33:44:01",
        },
        {
            "id": 200012,
            "hostname": "CM-100000",
            "mac": "00:11:22:33:66:12",
            "fixed_ip": 0,
            "ip": None,
            "modemmac": "00:11:22:33:44:00",
        },
        *[
            {
                "id": 200020 + i,
                "hostname": f"fix{i}",
                "mac": f"00:11:22:33:67:{i:02x}",
                "fixed_ip": 1,
                "ip": f"198.19.0.{10 + i}",
                "modemmac": "00:11:22:33:44:00",
            }
            for i in range(3)
        ],
    ]
    fixed = [str(e["ip"]) for e in endpoints if e["fixed_ip"] and e["ip"]]
    return dataclasses.replace(
        base,
        provbase=[rows.provbase(max_cpe=7)],
        ippool=pools,
        endpoint=endpoints,
        fixed_ips=fixed,
        # canonical MACs: upstream writes other spellings verbatim, dhcpd refuses them
        modem=[*[dict(m, mac=canon(m["mac"])) for m in base.modem], rows.modem(100030, "  ")],
    )


def canon(mac: object) -> object:
    try:
        return model.mac(mac)
    except model.BadValue:
        return mac


def model_mask(mask: str) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{model.netmask(mask)}").netmask)


def rendered(snap: Snapshot, role: str) -> dict[str, str]:
    cfg = config.Config(own_state=role).with_root("/r")
    out = Renderer(cfg).render(model.build(snap, role), FACTS)
    return {p.removeprefix("/r/etc/dhcp-nmsprime/"): f.data.decode() for p, f in out.files.items()}


def master_running(snap: Snapshot) -> Snapshot:
    """The rows of the master's last set its dhcpd took: before the overlapping pool came."""
    return dataclasses.replace(snap, ippool=[p for p in snap.ippool if p["id"] != OVERLAP_NEW])


def reference(snap: Snapshot, gw: Row) -> str:
    return upstream.netgw_conf(gw, list(snap.ippool), list(snap.fixed_ips))


def drop_empty_pool(text: str) -> str:
    """Upstream's pool without a range (dhcpd refuses it; the slave keeps the subnet only)."""
    return re.sub(r"\n\n\t\tpool\n\t\t\{\n\n\n\t\t\tfailover[^}]*\}", "", text)


def pools(text: str) -> list[str]:
    return re.findall(r"\t\tpool\n\t\t\{\n.*?\n\t\t\}", text, re.S)


def test_pools_are_identical_to_upstream() -> None:
    snap = snapshot()
    ref = master_running(snap)
    for role in ("master", "slave"):
        files = rendered(snap, role)
        for gw in snap.netgw:
            want = drop_empty_pool(reference(ref, gw))
            got = files[f"cmts_gws/{gw['id']}.conf"]
            assert pools(got) == pools(want), role
            if role == "master":
                assert got == want, "".join(
                    difflib.unified_diff(want.splitlines(True), got.splitlines(True))
                )
            else:  # item 9: only pools naming the pair's DNS differ, and only in that line
                dns = re.compile(r"\t\toption domain-name-servers .*\n")
                assert dns.sub("", got) == dns.sub("", want)
    slave = rendered(snap, "slave")
    assert (
        "option domain-name-servers 9.9.9.9, 172.20.0.2, 172.20.0.1 ;" in slave["cmts_gws/2.conf"]
    )
    assert "option domain-name-servers 8.8.8.8 ;" in slave["cmts_gws/2.conf"]
    # the fully fixed CPEPub subnet stays (its hosts' fixed addresses need it), without a pool
    assert "\tsubnet 198.19.0.0 netmask 255.255.255.0\n" in slave["cmts_gws/2.conf"]


def test_reported_rows() -> None:
    m = model.build(snapshot(), "slave")
    why: dict[tuple[str, int | None], str] = {}
    for r in m.rejects:
        why[(r.table, r.id)] = why.get((r.table, r.id), "") + r.reason + "; "
    assert "without allow/deny" in why[("ippool", 6)] and "without allow/deny" in why[("ippool", 7)]
    assert "after end" in why[("ippool", 7)]
    assert "fixed IP" in why[("ippool", 9)]
    assert "overlaps ippool id 1" in why[("ippool", OVERLAP_NEW)]
    assert "is not a MAC address" in why[("modem", 100030)]
    assert {t for t, _ in why} == {"ippool", "modem"}


def test_hosts_and_globals_match_upstream() -> None:
    snap = snapshot()
    f = rendered(snap, "slave")
    assert f["endpoints-host.conf"] == upstream.endpoints_host(snap)
    assert f["mta.conf"] == upstream.mta_conf(snap)
    assert f["modems-clients-public.conf"] == upstream.modems_public(snap)
    # the whitespace MAC is the one host upstream writes and the slave reports instead
    ref_hosts = upstream.modems_host(snap, OWN, PEER).splitlines(True)
    assert [h for h in ref_hosts if h not in f["modems-host.conf"]] == [
        'host cm-100030 { hardware ethernet   ; filename "cm/cm-100030.cfg"; '
        'ddns-hostname "cm-100030";}\n'
    ]
    assert f["modems-host.conf"] == "".join(h for h in ref_hosts if "cm-100030" not in h)
    # blocked.conf: the same lines; upstream ends without a newline
    assert f["blocked.conf"] == upstream.blocked(snap) + "\n"
    g = f["global.conf"]
    assert g[g.index("\n# CLASS Specs") :] == upstream.global_classes(snap.provbase[0], FACTS.fqdn)
    assert "lease limit 7;" in g
    assert upstream.TR069 + "\n" in f["dhcpd.conf"]
    for i in range(6):
        assert upstream.LOG_CM_MAC_BYTE.format(i=i) in f["log.conf"]
        assert upstream.LOG_HW_MAC_BYTE.format(i=i + 1) in f["log.conf"]


def test_dhcpd_accepts_the_slave_set() -> None:
    snap = snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.Config(own_state="slave").with_root(tmp)
        res = cycle.apply(cfg, snap, FACTS)
        assert res.ok, res.problems
        assert res.model is not None and not res.rejected_by_dhcpd
