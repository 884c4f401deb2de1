"""OMAPI against a real dhcpd: it runs in a throwaway network namespace joined to this one by a
veth pair (needs root); the client talks to it over TCP, DHCP probes go out on the veth."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.config import conf
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.sendrecv import srp1

from provhad import config, validate
from provhad.hosts import HostDelta, HostEntry, Member, delta
from provhad.omapi import ApplyResult, OmapiClient, OmapiNotConnected
from tests.lab.netlab import ip, netns_unavailable

DHCPD = config.ValidateConfig().dhcpd
KEY_NAME = "omapi_key"
pytestmark = [
    pytest.mark.skipif(not Path(DHCPD).exists(), reason="needs dhcpd"),
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
]
#: the option definitions of our dhcpd.conf that host statements use
DEFINITIONS = (
    "option space ccc;\n"
    "option ccc.dhcp-server-1 code 1 = ip-address;\n"
    "option ccc.SecondaryDHCPServer code 2 = ip-address;\n"
    "option ccc-encapsulation code 122 = encapsulate ccc;\n"
)


@dataclass
class Dhcpd:
    """A dhcpd serving 198.18.N.0/24 in namespace ``ns``; this namespace reaches it at
    ``server`` through the veth ``iface``."""

    ns: str
    iface: str
    server: str
    net: str
    secret: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def leases(self) -> Path:
        return self.dir / "dhcpd.leases"

    def config(self, hosts: str = "") -> str:
        return (
            "authoritative;\nping-check false;\nddns-update-style none;\n"
            f"{DEFINITIONS}"
            f"key {KEY_NAME} {{\n\talgorithm hmac-md5;\n\tsecret {self.secret};\n}}\n"
            f"omapi-key {KEY_NAME};\nomapi-port 7911;\n"
            f"subnet {self.net}.0 netmask 255.255.255.0 {{\n"
            f"\trange {self.net}.100 {self.net}.150;\n}}\n"
            f"{hosts}"
        )

    def start(self, hosts: str = "") -> None:
        """Start dhcpd on the current lease file and wait until OMAPI accepts connections."""
        conf = self.dir / "dhcpd.conf"
        conf.write_text(self.config(hosts))
        self.leases.touch()
        log = (self.dir / "dhcpd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                DHCPD,
                "-f",
                "-d",
                "-4",
                "-cf",
                str(conf),
                "-lf",
                str(self.leases),
                "-pf",
                str(self.dir / "dhcpd.pid"),
                "eth0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:  # bounded: until dhcpd listens on its OMAPI port
            assert self.proc.poll() is None, (self.dir / "dhcpd.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection((self.server, 7911), 1):
                return
            assert time.monotonic() < deadline, "dhcpd's OMAPI port never opened"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self, secret: str | None = None) -> OmapiClient:
        return OmapiClient(self.server, 7911, KEY_NAME, secret or self.secret)

    def offer(self, mac: str) -> BOOTP | None:
        """The BOOTP part of dhcpd's answer to a DISCOVER from ``mac``, or None."""
        xid = secrets.randbits(32)
        discover = (
            Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid, flags=0x8000)
            / DHCP(options=[("message-type", "discover"), "end"])
        )
        conf.checkIPaddr = False  # the OFFER comes from the server, not from 255.255.255.255
        answer = srp1(discover, iface=self.iface, timeout=3, verbose=False)
        return None if answer is None else answer[BOOTP]

    def lease(self, mac: str) -> bool:
        """DISCOVER then REQUEST from ``mac``: whether dhcpd ACKed (and wrote a lease)."""
        offer = self.offer(mac)
        if offer is None:
            return False
        request = (
            Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=offer.chaddr, xid=offer.xid, flags=0x8000)
            / DHCP(
                options=[
                    ("message-type", "request"),
                    ("requested_addr", offer.yiaddr),
                    ("server_id", self.server),
                    "end",
                ]
            )
        )
        answer = srp1(request, iface=self.iface, timeout=3, verbose=False)
        return answer is not None and (("message-type", 5) in answer[DHCP].options)


@pytest.fixture
def dhcpd(tmp_path: Path) -> Iterator[Dhcpd]:
    tag = secrets.token_hex(3)
    ns, iface, n = f"pom-{tag}", f"om-{tag}", 100 + secrets.randbelow(100)
    net = f"198.18.{n}"
    lab = Dhcpd(
        ns, iface, f"{net}.1", net, base64.b64encode(secrets.token_bytes(16)).decode(), tmp_path
    )
    try:
        ip("netns", "add", ns)
        ip("link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{net}.1/24", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)
        ip("addr", "add", f"{net}.2/24", "dev", iface)
        ip("link", "set", iface, "up")
        lab.start()
        yield lab
    finally:
        lab.stop()
        ip("netns", "del", ns, check=False)  # takes the veth pair with it


@pytest.fixture
async def client(dhcpd: Dhcpd) -> AsyncIterator[OmapiClient]:
    c = dhcpd.client()
    yield c
    await c.close()


def cm(n: int, mac: str | None = None, stmts: str | None = None) -> HostEntry:
    return HostEntry(
        f"cm-{n}",
        mac or f"00:11:22:33:44:{n:02x}",
        stmts if stmts is not None else f'filename "cm/cm-{n}.cfg"; ddns-hostname "cm-{n}";',
    )


async def test_added_hosts_are_served_and_deleted_ones_are_gone(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    unknown = dhcpd.offer("00:11:22:33:44:01")
    assert unknown is not None and unknown.file.rstrip(b"\0") == b""  # no filename yet
    fixed = HostEntry("cpe-a", "00:11:22:33:66:00", "", f"{dhcpd.net}.20")
    assert await client.apply(HostDelta(add=[cm(1), fixed])) == ApplyResult(applied=2)
    assert await client.lookup("cm-1") == {
        "name": "cm-1",
        "hardware-address": "00:11:22:33:44:01",
        "hardware-type": 1,
    }
    assert (await client.lookup("cpe-a") or {})["ip-address"] == f"{dhcpd.net}.20"
    offer = dhcpd.offer("00:11:22:33:44:01")
    assert offer is not None and offer.file.rstrip(b"\0") == b"cm/cm-1.cfg"
    offer = dhcpd.offer("00:11:22:33:66:00")
    assert offer is not None and offer.yiaddr == f"{dhcpd.net}.20"
    leases = dhcpd.leases.read_text()
    assert "host cm-1 {" in leases and "host cpe-a {" in leases

    assert await client.apply(HostDelta(delete=["cm-1"])) == ApplyResult(applied=1)
    assert await client.lookup("cm-1") is None
    offer = dhcpd.offer("00:11:22:33:44:01")
    assert offer is None or offer.file.rstrip(b"\0") == b""


async def test_a_change_is_delete_then_add_and_a_mac_may_move(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    old = {"cm-1": cm(1), "cm-2": cm(2)}
    assert (await client.apply(delta({}, old))).ok
    # cm-1 changes its statements, cm-2 is gone and its MAC moves to the new cm-3
    new = {"cm-1": cm(1, stmts='filename "cm/other.cfg";'), "cm-3": cm(3, "00:11:22:33:44:02")}
    assert await client.apply(delta(old, new)) == ApplyResult(applied=4)
    assert await client.lookup("cm-2") is None
    assert (await client.lookup("cm-3") or {})["hardware-address"] == "00:11:22:33:44:02"
    offer = dhcpd.offer("00:11:22:33:44:01")
    assert offer is not None and offer.file.rstrip(b"\0") == b"cm/other.cfg"
    offer = dhcpd.offer("00:11:22:33:44:02")
    assert offer is not None and offer.file.rstrip(b"\0") == b"cm/cm-3.cfg"


async def test_config_hosts_can_be_deleted_and_missing_names_are_no_error(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    dhcpd.stop()
    dhcpd.start('host cm-7 { hardware ethernet 00:11:22:33:44:07; filename "cm/cm-7.cfg"; }\n')
    assert await client.lookup("cm-7") is not None
    result = await client.apply(HostDelta(delete=["cm-7", "no-such-host"]))
    assert result == ApplyResult(applied=2)
    assert await client.lookup("cm-7") is None
    assert "host cm-7 {" in dhcpd.leases.read_text()  # the tombstone the stripper removes


async def test_a_second_host_of_a_name_or_mac_is_refused(dhcpd: Dhcpd, client: OmapiClient) -> None:
    assert (await client.apply(HostDelta(add=[cm(1)]))).ok
    same_name = cm(1, "00:11:22:33:44:99")
    same_mac = cm(5, "00:11:22:33:44:01")
    result = await client.apply(HostDelta(add=[same_name, same_mac, cm(6)]))
    assert result.applied == 1 and not result.unknown and result.error is None
    assert [name for name, _ in result.failed] == ["cm-1", "cm-5"]
    assert all(why.startswith("add: ") for _, why in result.failed), result.failed
    assert (await client.lookup("cm-1") or {})["hardware-address"] == "00:11:22:33:44:01"
    assert await client.lookup("cm-6") is not None


async def test_a_wrong_key_is_refused_and_nothing_is_sent(dhcpd: Dhcpd) -> None:
    wrong = dhcpd.client(base64.b64encode(secrets.token_bytes(16)).decode())
    result = await wrong.apply(HostDelta(add=[cm(1)]))
    assert result.error is not None and "key omapi_key refused" in result.error, result
    assert not result.unknown and result.applied == 0 and not result.failed
    right = dhcpd.client()
    assert await right.lookup("cm-1") is None
    await right.close()


async def test_no_dhcpd_is_an_error_not_an_unknown(dhcpd: Dhcpd) -> None:
    dhcpd.stop()
    result = await dhcpd.client().apply(HostDelta(add=[cm(1)]))
    assert result.error is not None and "refused" in result.error.lower(), result
    assert not result.unknown and result.applied == 0
    with pytest.raises(OmapiNotConnected):
        await dhcpd.client().lookup("cm-1")


async def test_a_hung_dhcpd_leaves_the_outcome_unknown_and_the_client_recovers(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    assert await client.lookup("cm-1") is None  # connected
    assert dhcpd.proc is not None
    pids = [int(p) for p in ip("netns", "pids", dhcpd.ns).stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = await client.apply(HostDelta(add=[cm(1), cm(2)]))
        # the kept connection is proven first (a lookup), then a new one is tried: each
        # within the default 5 s deadline, not forever; nothing was sent
        assert time.monotonic() - started < 15
        assert not result.ok and result.applied == 0 and result.error is not None
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # the same client opens a new connection; the add may or may not have happened
    assert await client.apply(HostDelta(delete=["cm-1"], add=[cm(1)])) == ApplyResult(applied=2)
    assert await client.lookup("cm-1") is not None


async def test_a_malformed_statement_is_taken_and_dropped_so_it_is_checked_first(
    dhcpd: Dhcpd, client: OmapiClient, tmp_path: Path
) -> None:
    """The lab fact behind check_hosts: dhcpd says yes and serves the host without it."""
    bad = cm(1, stmts='filename "cm/cm-1.cfg" ddns-hostname "cm-1";')  # a ';' missing
    assert await client.apply(HostDelta(add=[bad])) == ApplyResult(applied=1)
    offer = dhcpd.offer("00:11:22:33:44:01")
    assert offer is not None and offer.file.rstrip(b"\0") == b""
    problems = validate.check_hosts([bad], config.ValidateConfig(), DEFINITIONS)
    assert problems and problems[0].message.startswith("host cm-1: "), problems


async def test_a_dhcpd_restarted_since_the_last_use_gets_a_new_connection(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    """The HA lab found it: after a restart of dhcpd the kept connection is dead, and the
    next change must not be taken for one in doubt (a needless second restart)."""
    assert await client.lookup("cm-1") is None  # connected
    dhcpd.stop()
    dhcpd.start()
    assert await client.apply(HostDelta(add=[cm(1)])) == ApplyResult(applied=1)
    assert await client.lookup("cm-1") is not None


#: our global.conf's two classes of CPEs by their modem's MAC; a probe here is not relayed,
#: so its own hardware address stands in for the agent.remote-id a CMTS adds (tests/lab
#: shows the relayed case)
CLASSES = "".join(
    f'class "{name}" {{\n'
    "\tmatch pick-first-value (option agent.remote-id, substring(hardware, 1, 6));\n"
    f"\t{body}\n}}\n"
    for name, body in (("blocked", "deny booting;"), ("Client-Public", "lease limit 4;"))
)


def blocked(n: int) -> Member:
    return Member("blocked", f"00:11:22:33:44:{n:02x}")


async def test_subclass_members_are_added_and_removed_live(
    dhcpd: Dhcpd, client: OmapiClient
) -> None:
    """blocked.conf by OMAPI: a member added is denied at the next DISCOVER, a member of the
    config removed is served at once; dhcpd records only the member OMAPI added."""
    dhcpd.stop()
    dhcpd.start(CLASSES + f'subclass "blocked" {blocked(1).mac};\n')
    assert dhcpd.offer(blocked(1).mac) is None  # the config's member: booting denied
    assert dhcpd.offer(blocked(2).mac) is not None
    assert await client.member(blocked(1)) == {"lease-limit": 0, "leases-used": 0}
    assert await client.member(blocked(2)) is None

    result = await client.apply(HostDelta(leave=[blocked(1), blocked(9)], join=[blocked(2)]))
    assert result == ApplyResult(applied=3)  # removing a member that is not there is no error
    assert dhcpd.offer(blocked(2).mac) is None
    assert dhcpd.offer(blocked(1).mac) is not None
    assert await client.member(blocked(1)) is None and await client.member(blocked(2))
    public = Member("Client-Public", blocked(3).mac)
    assert (await client.apply(HostDelta(join=[public]))).ok
    assert await client.member(public) == {"lease-limit": 4, "leases-used": 0}  # the class's
    leases = dhcpd.leases.read_text()
    assert f'subclass "blocked" {blocked(2).mac} {{\n  dynamic;' in leases, leases
    assert f'subclass "Client-Public" {public.mac} {{\n  dynamic;\n  lease limit 4;' in leases
    assert blocked(1).mac not in leases  # a config member's removal is not recorded


async def test_a_member_dhcpd_cannot_take_is_refused(dhcpd: Dhcpd, client: OmapiClient) -> None:
    """An existing member (``exclusive``) and an unknown class: refused, the rest still go."""
    dhcpd.stop()
    dhcpd.start(CLASSES)
    assert (await client.apply(HostDelta(join=[blocked(1)]))).ok
    stray = Member("no-such-class", blocked(2).mac)
    result = await client.apply(HostDelta(join=[blocked(1), stray, blocked(3)]))
    assert result.applied == 1 and not result.unknown and result.error is None
    assert result.failed == [
        ('subclass "blocked" 00:11:22:33:44:01', "add: specified object already exists"),
        ('subclass "no-such-class" 00:11:22:33:44:02', "add: can't update object"),
    ]
    assert await client.member(blocked(3)) is not None
