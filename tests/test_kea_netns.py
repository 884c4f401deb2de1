"""A real kea-dhcp6 serving the set provhad rendered: a relayed SOLICIT gets an ADVERTISE with
an address from the v6 pool. Runs in two throwaway network namespaces (needs root)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_RelayForward,
    DHCP6_RelayReply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRelayMsg,
)

from provhad import model, model6
from tests import rows
from tests.lab.netlab import in_netns, ip, netns_unavailable
from tests.test_kea import FACTS, KEA, ep6, needs_kea, pool6, renderer, snap6

SERVER, RELAY = "fd00::1", "fd00::2"
pytestmark = [
    needs_kea,
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
]


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Server and relay namespaces joined by a veth pair (fd00::1 and fd00::2, no DAD)."""
    tag = secrets.token_hex(3)
    server, relay = f"pk6s-{tag}", f"pk6r-{tag}"
    try:
        ip("netns", "add", server)
        ip("netns", "add", relay)
        ip(
            "link",
            "add",
            "ks",
            "netns",
            server,
            "type",
            "veth",
            "peer",
            "name",
            "kr",
            "netns",
            relay,
        )
        for ns, dev, addr in ((server, "ks", SERVER), (relay, "kr", RELAY)):
            ip("link", "set", dev, "up", ns=ns)
            ip("addr", "add", f"{addr}/64", "dev", dev, "nodad", ns=ns)
        yield server, relay
    finally:
        ip("netns", "del", server, check=False)
        ip("netns", "del", relay, check=False)


def server_config(gateways: str) -> str:
    """Upstream's main-config layout, bound to the server's address; no files outside tmp."""
    head = {
        "interfaces-config": {"interfaces": [f"ks/{SERVER}"]},
        "lease-database": {"type": "memfile", "persist": False},
        "server-id": {"type": "EN", "enterprise-id": 2495, "identifier": "0a0b", "persist": False},
        "preferred-lifetime": 64800,
        "valid-lifetime": 86400,
    }
    members = json.dumps(head)[1:-1]
    return f'{{"Dhcp6": {{{members}, "shared-networks": [ <?include "{gateways}"?> ]}}}}'


def test_the_slave_set_answers_a_relayed_solicit(
    tmp_path: Path, namespaces: tuple[str, str]
) -> None:
    server_ns, relay_ns = namespaces
    snap = snap6([pool6(11, 1, 1, router_ip=RELAY)], [ep6(1, 1, 5)])
    rendered = renderer(tmp_path).render(
        model.build(rows.small(), "slave"), FACTS, v6=model6.build(snap)
    )
    for f in rendered.files.values():
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_bytes(f.data)
    main = tmp_path / "dhcp6-test.conf"
    main.write_text(server_config(f"{rendered.kea_dir}/gateways6.conf"))
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "KEA_PIDFILE_DIR": str(run), "KEA_LOCKFILE_DIR": str(run)}
    log = (tmp_path / "kea.log").open("w")
    kea = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, KEA, "-c", str(main)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        with in_netns(relay_ns):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind((RELAY, 547))
        sock.settimeout(1.0)
        client = "00:11:22:33:77:01"
        solicit = (
            DHCP6_Solicit(trid=0x1234)
            / DHCP6OptElapsedTime()
            / DHCP6OptClientId(duid=DUID_LL(lladdr=client))
            / DHCP6OptIA_NA(iaid=1)
        )
        relayed = DHCP6_RelayForward(
            linkaddr="2001:db8:1::1", peeraddr="fe80::211:22ff:fe33:7701"
        ) / DHCP6OptRelayMsg(message=solicit)
        # the server binds its socket some time after the exec: resend until it answers,
        # like a real relay does (bounded: 30 tries of 1 s)
        data = b""
        for _ in range(30):
            sock.sendto(bytes(relayed), (SERVER, 547))
            try:
                data, _peer = sock.recvfrom(4096)
                break
            except TimeoutError:
                assert kea.poll() is None, (tmp_path / "kea.log").read_text()
        assert data, (tmp_path / "kea.log").read_text()
    finally:
        os.killpg(kea.pid, signal.SIGTERM)
        kea.wait(timeout=30)
        log.close()
    reply = DHCP6_RelayReply(data)
    advertise = reply[DHCP6OptRelayMsg].message
    assert isinstance(advertise, DHCP6_Advertise) and advertise.trid == 0x1234
    offered = advertise[DHCP6OptIAAddress].addr
    assert offered == "2001:db8:1::100"  # the first address of ip_pool_start-ip_pool_end
