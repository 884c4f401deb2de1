"""The HA lab: a real dhcpd failover pair (master rendered by `provhad render`, slave managed by
`provhad run`), a relaying CMTS and a TFTP server, all in network namespaces.

One test walks through the incident in order: the slave's provhad starts (and Kea answers a
relayed DHCPv6 SOLICIT), failover normal, load balancing, the slave's ACKs, the master dies, the
slave's dhcpd logs and runs the DDNS hook as upstream's, a pool changes while the master is down,
CPE and MTA leases are released, the master returns. With PROVHAD_LAB_REPORT=1 it writes
docs/ha-lab.md and its timeline plot.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections import Counter
from typing import Any

from tests.lab.ha import (
    CHANGED_DNS,
    POOLS,
    PUBLIC_MODEMS,
    V6_ENDPOINT,
    V6_POOL,
    HALab,
    is_public,
)
from tests.lab.netlab import CMTS_IP6, MASTER_IP, SLAVE_IP, SLAVE_IP6
from tests.lab.relay import Client, Relay, Reply, solicit6, tftp_get, vivso_tftp_servers
from tests.lab.report import Phase, write_report

NORMAL = r"failover peer \S+: I move from \S+ to normal"
PADDED_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
V6_CLIENT = "00:e0:4c:06:00:01"  # a v6 client without a reservation


def ips(value: Any) -> list[str]:
    """An address option as scapy parsed it (one value, or a list of them)."""
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def served_by(acks: dict[str, Reply]) -> Counter[str]:
    return Counter("master" if r.server == MASTER_IP else "slave" for r in acks.values())


def assert_slave_ack(c: Client, dns: list[str] | None = None) -> None:
    """What the slave's ACK must carry (its own address first everywhere)."""
    o = c.options
    assert c.server == SLAVE_IP, c
    assert c.siaddr == SLAVE_IP, f"{c.name}: next-server {c.siaddr}"
    assert ips(o["name_server"]) == (dns or [SLAVE_IP, MASTER_IP]), (c.name, o)
    assert ips(o["time_server"]) == [SLAVE_IP, MASTER_IP], (c.name, o)
    if c.kind == "cm":
        assert c.filename == f"cm/{c.name}.cfg"
        raw = o["vendor_specific_information"]
        assert vivso_tftp_servers(bytes(raw)) == [SLAVE_IP, MASTER_IP], raw


def assert_upstream_log(log: str, clients: list[Client]) -> int:
    """The lines upstream's log.conf writes for devices behind a modem, with zero-padded MACs
    (the form the NMS Prime GUI greps for), for every device ``clients`` last got a lease for;
    none for the modems themselves. Returns how many lines were checked."""
    checked = 0
    for c in clients:
        if c.kind == "cm":
            assert f" {c.mac} of Modem" not in log, c.name
            continue
        kind = c.kind.upper()
        for line in (
            f"DHCPDISCOVER received of {kind} {c.mac} of Modem {c.remote_id}",
            f"{kind} {c.mac} of Modem {c.remote_id} is now ONLINE with IP {c.ip}",
        ):
            assert line in log, line
            checked += 1
    for found in re.finditer(r"(?:CPE|MTA) (\S+) of Modem (\S+)", log):
        assert all(PADDED_MAC.fullmatch(mac) for mac in found.groups()), found[0]
    return checked


def assert_commit_hook(lab: HALab, clients: list[Client]) -> int:
    """The DDNS hook ran on commit with "0" for each CPE the slave gave its lease (zero-padded
    MACs), never for a modem or an MTA; the public CPEs' names went to both named (own first,
    then the peer). Returns how many commits were checked."""
    calls = lab.hook_calls()
    for c in clients:
        if c.kind == "cpe":
            assert f"{c.mac} {c.remote_id} {c.ip} 0" in calls, (c.name, calls[-10:])
        else:
            assert not [x for x in calls if x.startswith(c.mac)], c.name
    sent = lab.nsupdates()
    for c in clients:
        if c.kind == "cpe" and is_public(c):
            name = lab.cpe_name(c.mac)
            for server in ("127.0.0.1", MASTER_IP):
                update = f"server {server}\nupdate add {name} 3600 A {c.ip}\nsend"
                assert update in sent, (c.name, update, sent[-400:])
    return sum(c.kind == "cpe" for c in clients)


def pools(lab: HALab, node: str) -> dict[str, bytes]:
    """The node's rendered pool declarations (cmts_gws/*.conf), which must be identical."""
    files = sorted(lab.dhcp_file(node, "cmts_gws").glob("*.conf"))
    assert files
    return {f.name: f.read_bytes() for f in files}


def fetch_configfiles(lab: HALab, modems: list[Client]) -> int:
    """Each modem reads the file named in its ACK from its next-server; returns how many."""
    for c in modems:
        data = tftp_get(lab.net.ns("cmts"), c.siaddr, c.filename)
        assert data == (lab.slave_root / "tftpboot" / c.filename).read_bytes(), c.name
    return len(modems)


def test_failover_pair_keeps_customers_online(halab: HALab) -> None:
    lab = halab
    phases: list[Phase] = []
    events: list[tuple[float, str]] = []
    t0 = lab.started
    relay = Relay(lab.net.ns("cmts"), [MASTER_IP, SLAVE_IP])
    try:
        # --- start: the slave's provhad publishes, says READY, then starts dhcpd (the first
        # restart happens beside the main loop, after READY)
        ready = lab.notify.wait(lambda m: m.get("READY") == "1", 120, lab.daemon_alive)
        t_ready = time.monotonic()
        assert "live gen 1," in ready["STATUS"]
        assert "dhcpd restart pending" in ready["STATUS"], ready
        t_running, _ = lab.wait_running(1)
        lab.slave_log.wait(r"=== restart by provhad")
        ready_to_dhcpd = t_running - t_ready
        v6: dict[str, Any] = {}
        if lab.kea is not None:
            # Kea was started by provhad (services.kea_restart_command) on the files it
            # rendered; the CMTS relays SOLICITs to the slave's v6 address
            lab.kea_log.wait(r"=== restart by provhad", timeout=1)
            t = time.monotonic()
            cmts, link = lab.net.ns("cmts"), str(V6_POOL["router_ip"])
            pooled = solicit6(cmts, CMTS_IP6, SLAVE_IP6, link, V6_CLIENT)
            first = ipaddress.IPv6Address(str(V6_POOL["ip_pool_start"]))
            last = ipaddress.IPv6Address(str(V6_POOL["ip_pool_end"]))
            assert first <= ipaddress.IPv6Address(pooled.address) <= last, pooled
            assert pooled.dns == [V6_POOL["dns1_ip"], V6_POOL["dns3_ip"]], pooled
            reserved = solicit6(cmts, CMTS_IP6, SLAVE_IP6, link, str(V6_ENDPOINT["mac"]))
            assert reserved.address == V6_ENDPOINT["ip"], reserved
            v6 = {"pooled": pooled.address, "reserved": reserved.address,
                  "dns": pooled.dns, "s": time.monotonic() - t}  # fmt: skip
        t_start = time.monotonic()
        lab.start_master()
        lab.master_log.wait(NORMAL, timeout=120)
        lab.slave_log.wait(NORMAL, timeout=120)
        t_normal = time.monotonic() - t_start
        events.append((time.monotonic() - t0, "failover normal"))
        # the primary hands the secondary its half of the free leases
        backup = lab.wait_balanced(0, pools=POOLS)
        assert pools(lab, "master") == pools(lab, "slave")

        # --- both peers answer (load balancing on the client hash)
        t = time.monotonic()
        acks = relay.lease(lab.clients, retry_after=4)
        assert len(acks) == len(lab.clients), sorted({c.name for c in lab.clients} - set(acks))
        normal_split = served_by(acks)
        assert normal_split["master"] > 0 and normal_split["slave"] > 0, normal_split
        phases.append(Phase("both up", t - t0, time.monotonic() - t0))
        from_slave = [c for c in lab.clients if c.server == SLAVE_IP]
        for c in from_slave:
            assert_slave_ack(c)
        tftp_normal = fetch_configfiles(lab, [c for c in from_slave if c.kind == "cm"])

        # --- the master becomes unreachable; the slave does not know yet (still normal), so
        # the master's clients are answered once they retry with secs past the load balancing
        mark = lab.slave_log.mark()
        lab.cut_master(up=False)
        events.append((time.monotonic() - t0, "master cable pulled"))
        t = time.monotonic()
        acks = relay.lease(lab.clients, retry_after=2)
        cut_times = [acks[c.name].at - t for c in lab.clients if c.name in acks]
        assert len(acks) == len(lab.clients), sorted({c.name for c in lab.clients} - set(acks))
        assert served_by(acks) == Counter(slave=len(lab.clients))
        assert "communications-interrupted" not in lab.slave_log.text()[mark:]
        # the master's hash buckets: not at secs 0 (still load balanced), only on the retry
        masters = [c.name for c in lab.clients if c.name not in {x.name for x in from_slave}]
        assert min(acks[n].at - t for n in masters) >= 2, "the slave skipped load balancing"
        for c in lab.clients:
            assert_slave_ack(c)
        modems = [c for c in lab.clients if c.kind == "cm"]
        tftp_cut = fetch_configfiles(lab, modems)
        phases.append(Phase("master unreachable", t - t0, time.monotonic() - t0))

        # --- the master's dhcpd dies and its link comes back: the slave notices
        down_mark = lab.slave_log.mark()
        t_kill = time.monotonic()
        events.append((t_kill - t0, "master killed"))
        lab.kill_master()
        lab.cut_master(up=True)
        lab.slave_log.wait(r"I move from normal to communications-interrupted", mark, 90)
        t_detect = time.monotonic() - t_kill
        t = time.monotonic()
        acks = relay.lease(lab.clients, retry_after=2)
        down_times = [acks[c.name].at - t for c in lab.clients if c.name in acks]
        assert len(acks) == len(lab.clients), sorted({c.name for c in lab.clients} - set(acks))
        assert served_by(acks) == Counter(slave=len(lab.clients))
        for c in lab.clients:
            assert_slave_ack(c)
        cpes = [c for c in lab.clients if c.kind == "cpe"]
        assert [c.name for c in cpes if is_public(c)] == [f"cpe-{i}" for i in range(PUBLIC_MODEMS)]
        tftp_down = fetch_configfiles(lab, modems)
        phases.append(Phase("master down", t - t0, time.monotonic() - t0))
        # every device behind a modem got its lease from the slave in this phase: its dhcpd
        # logged and ran the hook as upstream's log.conf does
        log_lines = assert_upstream_log(lab.slave_log.text()[down_mark:], lab.clients)
        commits = assert_commit_hook(lab, lab.clients)

        # --- a pool changes in the database while the master is down
        before = {c.name: c.ip for c in lab.clients}
        mark = lab.slave_log.mark()
        t_change = time.monotonic()
        lab.sql("UPDATE ippool SET dns1_ip = %s WHERE type = 'CPEPriv'", CHANGED_DNS)
        events.append((t_change - t0, "pool changed in the DB"))
        lab.wait_status("live gen 2,")
        t_published = time.monotonic()
        assert CHANGED_DNS in lab.dhcp_file("slave", "cmts_gws/1.conf").read_text()
        lab.slave_log.wait(r"=== restart by provhad", mark, 30)
        t_running = lab.wait_running(2)[0]
        # informational, not asserted (its timing is dhcpd's): does anyone answer meanwhile?
        probe = relay.lease(lab.clients[:3], retry_after=1, deadline=2)
        # a restarted dhcpd stays in STARTUP (answers nobody) before it resumes its old state
        lab.slave_log.wait(r"I move from startup to communications-interrupted", mark, 60)
        t_startup = time.monotonic() - t_running
        # from the publish (the supervisor restarts at once) to dhcpd serving again
        outage = Phase("slave dhcpd restart + failover startup", t_published - t0,
                       time.monotonic() - t0)  # fmt: skip
        t_published, t_restarted = t_published - t_change, t_running - t_change
        t = time.monotonic()
        renewed = relay.renew(lab.clients, to=[SLAVE_IP])
        assert {n: r.kind for n, r in renewed.items()} == {c.name: "ack" for c in lab.clients}
        assert {c.name: c.ip for c in lab.clients} == before  # no lease lost
        for c in lab.clients:  # the private CPEs with the pool's new DNS server
            assert_slave_ack(c, [CHANGED_DNS] if c.kind == "cpe" and not is_public(c) else None)
        phases.append(Phase("pool changed", t - t0, time.monotonic() - t0))

        # --- releases (master still down): a CPE's runs the hook with "1" (the handler its
        # last commit set), an MTA's runs nothing, as upstream
        calls = len(lab.hook_calls())
        mta = next(c for c in lab.clients if c.kind == "mta")
        pub = next(c for c in cpes if is_public(c))
        mark = lab.slave_log.mark()
        for c in (mta, pub):  # in this order: dhcpd runs a hook before it takes the next packet
            relay.release(c)
            lab.slave_log.wait(
                rf"DHCPRELEASE of {re.escape(str(c.ip))} from {c.mac} .*\(found\)", mark
            )
        released = f"{pub.mac} {pub.remote_id} {pub.ip} 1"
        assert lab.wait_hook_call(released)[calls:] == [released]
        name = lab.cpe_name(pub.mac)
        for server in ("127.0.0.1", MASTER_IP):
            assert f"server {server}\nupdate delete {name} A\nsend" in lab.nsupdates()

        # --- the master returns (with the changed pool): both go back to normal
        lab.render_master()
        assert pools(lab, "master") == pools(lab, "slave")
        slave_mark = lab.slave_log.mark()
        t_back = time.monotonic()
        events.append((t_back - t0, "master back"))
        master_mark = lab.start_master()
        lab.master_log.wait(NORMAL, master_mark, 120)
        lab.slave_log.wait(NORMAL, slave_mark, 120)
        t_renormal = time.monotonic() - t_back
        # (leases the slave handed out alone are being reconciled: not every backup lease the
        # master counts is in the slave's lease file as backup at once)
        backup_back = lab.wait_balanced(master_mark, pools=POOLS, share=0.95)
        t = time.monotonic()
        acks = relay.lease(lab.clients, retry_after=4)
        assert len(acks) == len(lab.clients)
        back_split = served_by(acks)
        assert back_split["master"] > 0 and back_split["slave"] > 0, back_split
        phases.append(Phase("master back", t - t0, time.monotonic() - t0))

        if os.environ.get("PROVHAD_LAB_REPORT") == "1":
            write_report(
                clients=lab.clients,
                replies=relay.leases,
                t0=t0,
                phases=phases,
                events=events,
                outage=outage,
                foreign=relay.foreign_acks,
                states={"master": lab.master_log.states(), "slave": lab.slave_log.states()},
                numbers={
                    "normal_after_s": t_normal,
                    "ready_to_dhcpd_s": ready_to_dhcpd,
                    "restarted_s": t_restarted,
                    "v6": v6,
                    "log_lines": log_lines,
                    "commits": commits,
                    "public_cpes": PUBLIC_MODEMS,
                    "hook_ms": lab.hook_ms(),
                    "detect_s": t_detect,
                    "down_max_ack_s": max(down_times),
                    "cut_max_ack_s": max(cut_times),
                    "cut_min_ack_s": min(cut_times),
                    "startup_s": t_startup,
                    "startup_probe": f"{len(probe)} of 3",
                    "backup": backup,
                    "backup_back": backup_back,
                    "tftp_cut": tftp_cut,
                    "published_s": t_published,
                    "renormal_s": t_renormal,
                    "tftp_normal": tftp_normal,
                    "tftp_down": tftp_down,
                    "split_normal": dict(normal_split),
                    "split_back": dict(back_split),
                    "replies": len(relay.log),
                },
            )
    finally:
        relay.close()
