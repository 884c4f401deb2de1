"""Small hand-written snapshots for tests of the pure core."""

from __future__ import annotations

from typing import Any

from provhad.snapshot import Row, Snapshot

MASTER_PW = "bWFzdGVyc2VjcmV0MTIzNA=="
SLAVE_PW = "c2xhdmVzZWNyZXQxMjM0NQ=="


def provha(**kw: Any) -> Row:
    row: Row = {
        "id": 1,
        "master": "172.20.0.1",
        "slaves": "172.20.0.2",
        "master_dns_password": MASTER_PW,
        "slave_dns_password": SLAVE_PW,
        "load_ratio_master": 0.5,
        "slave_config_rebuild_interval": 3600,
    }
    row.update(kw)
    return row


def provbase(**kw: Any) -> Row:
    row: Row = {
        "id": 1,
        "provisioning_server": "172.20.0.1",
        "domain_name": "nmsprime.test",
        "dhcp_def_lease_time": 86400,
        "dhcp_max_lease_time": 172800,
        "multiple_provisioning_systems": 0,
        "dns_password": MASTER_PW,
    }
    row.update(kw)
    return row


def pool(
    id: int,
    netgw_id: int,
    type: str,
    net: str,
    mask: str,
    start: str,
    end: str,
    router: str,
    **kw: Any,
) -> Row:
    row: Row = {
        "id": id,
        "netgw_id": netgw_id,
        "type": type,
        "net": net,
        "netmask": mask,
        "ip_pool_start": start,
        "ip_pool_end": end,
        "router_ip": router,
        "broadcast_ip": None,
        "dns1_ip": "172.20.0.1",
        "dns2_ip": None,
        "dns3_ip": None,
        "optional": None,
        "active": 1,
    }
    row.update(kw)
    return row


def modem(id: int, mac: str | None, **kw: Any) -> Row:
    row: Row = {"id": id, "hostname": f"cm-{id}", "mac": mac, "public": 0, "internet_access": 1}
    row.update(kw)
    return row


def small() -> Snapshot:
    """Two CMTSs with one pool of each type, a few modems, an MTA and endpoints."""
    return Snapshot(
        provha=[provha()],
        provbase=[provbase()],
        provvoip=[{"id": 1, "mta_domain": "mta.nmsprime.test"}],
        netgw=[{"id": 1, "hostname": "cmts-01"}, {"id": 2, "hostname": "cmts-02"}],
        ippool=[
            pool(1, 1, "CM", "10.0.0.0", "255.255.224.0", "10.0.0.10", "10.0.31.250", "10.0.0.1"),
            pool(2, 1, "CPEPriv", "100.64.0.0", "/24", "100.64.0.10", "100.64.0.250", "100.64.0.1"),
            pool(
                3,
                1,
                "CPEPub",
                "198.18.0.0",
                "255.255.255.0",
                "198.18.0.10",
                "198.18.0.20",
                "198.18.0.1",
                broadcast_ip="198.18.0.255",
                dns2_ip="172.20.0.2",
            ),
            pool(
                4,
                1,
                "MTA",
                "100.96.0.0",
                "255.255.255.0",
                "100.96.0.10",
                "100.96.0.250",
                "100.96.0.1",
                optional='option domain-name "voip.example";',
            ),
            pool(
                5,
                2,
                "CM",
                "10.0.32.0",
                "255.255.224.0",
                "10.0.32.10",
                "10.0.63.250",
                "10.0.32.1",
                active=0,
            ),
        ],
        modem=[
            modem(100000, "00:11:22:33:44:00", public=1),
            modem(100001, "00-11-22-33-44-01"),
            modem(100002, "0011.2233.4402", internet_access=0),
            modem(100003, None),
            modem(100004, "ff:ff:ff:ff:ff:ff"),
        ],
        mta=[{"id": 300000, "modem_id": 100001, "mac": "00:11:22:33:55:01"}],
        endpoint=[
            {
                "id": 200000,
                "hostname": "cpe-a",
                "mac": "00:11:22:33:66:00",
                "fixed_ip": 1,
                "ip": "198.18.0.15",
                "modemmac": "00:11:22:33:44:00",
            },
            {
                "id": 200001,
                "hostname": "cpe-b",
                "mac": None,
                "fixed_ip": 0,
                "ip": None,
                "modemmac": "00:11:22:33:44:01",
            },
        ],
        fixed_ips=["198.18.0.15"],
        node="test",
    )
