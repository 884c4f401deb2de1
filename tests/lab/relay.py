"""The CMTS side of the lab: a DHCP relay agent for simulated clients, and a TFTP client.

Packets are built and parsed with scapy; they travel through an ordinary UDP socket bound to
port 67 in the cmts namespace, as a relay agent sends them: unicast to every helper address,
with giaddr and option 82. dhcpd answers to giaddr:67, which is on the cmts node's ``lo``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP  # type: ignore[import-untyped,unused-ignore]
from scapy.layers.dhcp6 import (  # type: ignore[import-untyped,unused-ignore]
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_RelayForward,
    DHCP6_RelayReply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptRelayMsg,
)

from tests.lab.netlab import in_netns, udp_socket

RETRY_SECS = 10  # `secs` of a retry: past "load balance max seconds 5", both peers answer


@dataclass
class Client:
    """A simulated device behind the CMTS."""

    name: str
    kind: str  # "cm", "mta" or "cpe"
    mac: str
    remote_id: str  # the modem's MAC (option 82 sub-option 2)
    giaddr: str
    vendor: str | None = None  # option 60
    #: the last ACK
    ip: str | None = None
    server: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    siaddr: str = ""
    filename: str = ""

    def chaddr(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", "")) + bytes(10)


@dataclass
class Reply:
    """One OFFER/ACK/NAK as the relay received it."""

    kind: str
    xid: int
    server: str  # option 54
    yiaddr: str
    siaddr: str
    filename: str
    options: dict[str, Any]
    at: float


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def _options(pkt: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple) and len(opt) >= 2:
            out[str(opt[0])] = opt[1] if len(opt) == 2 else list(opt[1:])
    return out


_TYPES = {1: "discover", 2: "offer", 3: "request", 5: "ack", 6: "nak"}


class Relay:
    """Relays clients' DISCOVER/REQUEST to the servers and collects the answers."""

    def __init__(self, ns: str, servers: list[str]) -> None:
        self.servers = servers
        self.sock = udp_socket(ns, ("0.0.0.0", 67))
        self.log: list[Reply] = []  # every reply received
        self.leases: list[Reply] = []  # the ACKs the clients took
        #: ACKs from the server a client did not select (dhcpd's failover peer may ACK a
        #: REQUEST carrying the other server's identifier); a client ignores them
        self.foreign_acks: list[Reply] = []

    def close(self) -> None:
        self.sock.close()

    def _packet(
        self,
        c: Client,
        xid: int,
        msg: str,
        secs: int,
        *,
        server_id: str | None = None,
        requested: str | None = None,
        ciaddr: str = "0.0.0.0",
    ) -> bytes:
        opts: list[Any] = [("message-type", msg)]
        if server_id:
            opts.append(("server_id", server_id))
        if requested:
            opts.append(("requested_addr", requested))
        if msg != "release":  # RFC 2131 table 5: a RELEASE carries neither
            if c.vendor:
                opts.append(("vendor_class_id", c.vendor.encode()))
            opts.append(("param_req_list", [1, 3, 4, 6, 7, 42, 43, 66, 67, 122, 125]))
        rid = bytes.fromhex(c.remote_id.replace(":", ""))
        opts.append(("relay_agent_information", b"\x02" + bytes([len(rid)]) + rid))
        opts.append("end")
        pkt = BOOTP(
            op=1, xid=xid, secs=secs, hops=1, ciaddr=ciaddr, giaddr=c.giaddr, chaddr=c.chaddr()
        ) / DHCP(options=opts)
        return bytes(pkt)

    def _send(self, data: bytes, to: list[str]) -> None:
        for server in to:
            self.sock.sendto(data, (server, 67))

    def _receive(self, timeout: float) -> Reply | None:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return None
        data, _addr = self.sock.recvfrom(4096)
        pkt = BOOTP(data)
        if DHCP not in pkt:
            return None
        opts = _options(pkt)
        kind = _TYPES.get(int(opts.get("message-type", 0)), "other")
        filename = bytes(pkt.file).rstrip(b"\0").decode(errors="replace")
        reply = Reply(
            kind,
            int(pkt.xid),
            str(opts.get("server_id", "")),
            str(pkt.yiaddr),
            str(pkt.siaddr),
            filename,
            opts,
            time.monotonic(),
        )
        self.log.append(reply)
        return reply

    def lease(
        self,
        clients: list[Client],
        *,
        first_secs: int = 0,
        retry_after: float = 2.0,
        deadline: float = 30.0,
        to: list[str] | None = None,
    ) -> dict[str, Reply]:
        """DORA for all ``clients`` at once, like a CMTS with two helper addresses.

        A client that gets no OFFER within ``retry_after`` seconds sends its DISCOVER again with
        ``secs`` = RETRY_SECS (past the failover load balancing limit). Returns each client's
        ACK by name (clients without one are missing); updates the clients' lease fields.
        """
        servers = to or self.servers
        start = time.monotonic()
        xids = {int.from_bytes(os.urandom(4), "big"): c for c in clients}
        sent_at = dict.fromkeys(xids, start)
        requested: dict[int, str] = {}  # xid -> the server whose OFFER the client took
        acks: dict[str, Reply] = {}
        for xid, c in xids.items():
            self._send(self._packet(c, xid, "discover", first_secs), servers)
        while len(acks) < len(clients) and (now := time.monotonic()) < start + deadline:
            for xid, c in xids.items():  # retries of clients without an OFFER
                if c.name not in acks and xid not in requested and now - sent_at[xid] > retry_after:
                    secs = max(RETRY_SECS, int(now - start))
                    self._send(self._packet(c, xid, "discover", secs), servers)
                    sent_at[xid] = now
            reply = self._receive(0.2)
            if reply is None or reply.xid not in xids:
                continue
            c = xids[reply.xid]
            if reply.kind == "offer" and reply.xid not in requested:
                requested[reply.xid] = reply.server
                secs = int(time.monotonic() - start) if first_secs == 0 else first_secs
                # the client broadcasts its REQUEST; the CMTS relays it to every helper
                self._send(
                    self._packet(
                        c,
                        reply.xid,
                        "request",
                        secs,
                        server_id=reply.server,
                        requested=reply.yiaddr,
                    ),
                    servers,
                )
            elif reply.kind == "ack" and reply.server != requested.get(reply.xid):
                self.foreign_acks.append(reply)
            elif reply.kind == "ack" and c.name not in acks:
                acks[c.name] = reply
                self._remember(c, reply)
            elif reply.kind == "nak":
                requested.pop(reply.xid, None)
                sent_at[reply.xid] = 0.0
        return acks

    def renew(
        self, clients: list[Client], *, deadline: float = 15.0, to: list[str] | None = None
    ) -> dict[str, Reply]:
        """REBINDING: REQUEST with ciaddr = the client's address, to every server."""
        servers = to or self.servers
        start = time.monotonic()
        xids = {int.from_bytes(os.urandom(4), "big"): c for c in clients}
        for xid, c in xids.items():
            assert c.ip is not None, c.name
            self._send(self._packet(c, xid, "request", RETRY_SECS, ciaddr=c.ip), servers)
        answers: dict[str, Reply] = {}
        while len(answers) < len(clients) and time.monotonic() < start + deadline:
            reply = self._receive(start + deadline - time.monotonic())
            if reply is not None and reply.xid in xids and reply.kind in ("ack", "nak"):
                c = xids[reply.xid]
                answers.setdefault(c.name, reply)
                if reply.kind == "ack":
                    self._remember(c, reply)
        return answers

    def release(self, c: Client) -> None:
        """DHCPRELEASE of the client's lease to the server that gave it (no answer comes).

        The CMTS relays it like the client's other unicasts (giaddr, option 82)."""
        assert c.ip is not None and c.server is not None, c.name
        xid = int.from_bytes(os.urandom(4), "big")
        self._send(self._packet(c, xid, "release", 0, server_id=c.server, ciaddr=c.ip), [c.server])

    def _remember(self, c: Client, reply: Reply) -> None:
        self.leases.append(reply)
        c.ip, c.server, c.options = reply.yiaddr, reply.server, reply.options
        c.siaddr, c.filename = reply.siaddr, reply.filename


def vivso_tftp_servers(raw: bytes) -> list[str]:
    """Option 125 (V-I vendor-specific), enterprise 4491, sub-option 2: the TFTP servers."""
    out: list[str] = []
    pos = 0
    while pos + 5 <= len(raw):
        enterprise, length = struct.unpack("!IB", raw[pos : pos + 5])
        data = raw[pos + 5 : pos + 5 + length]
        pos += 5 + length
        sub = 0
        while enterprise == 4491 and sub + 2 <= len(data):
            code, size = data[sub], data[sub + 1]
            value = data[sub + 2 : sub + 2 + size]
            if code == 2:
                out += [socket.inet_ntoa(value[i : i + 4]) for i in range(0, size, 4)]
            sub += 2 + size
    return out


def tftp_get(ns: str, server: str, filename: str, timeout: float = 5.0) -> bytes:
    """A TFTP read request (RFC 1350, octet mode) from namespace ``ns``; returns the file."""
    sock = udp_socket(ns, ("0.0.0.0", 0))
    try:
        sock.settimeout(timeout)
        sock.sendto(b"\x00\x01" + filename.encode() + b"\x00octet\x00", (server, 69))
        data = b""
        expect = 1
        while True:
            packet, peer = sock.recvfrom(4 + 65536)
            opcode, number = struct.unpack("!HH", packet[:4])
            if opcode == 5:
                raise FileNotFoundError(f"tftp://{server}/{filename}: {packet[4:-1].decode()}")
            if opcode != 3 or number != expect:
                continue
            data += packet[4:]
            sock.sendto(struct.pack("!HH", 4, number), peer)
            if len(packet) - 4 < 512:
                return data
            expect = (expect + 1) % 65536
    finally:
        sock.close()


@dataclass
class Advertise:
    """What a DHCPv6 server offered a client (through the relay)."""

    address: str
    dns: list[str]
    at: float


def solicit6(
    ns: str, relay: str, server: str, linkaddr: str, mac: str, tries: int = 30
) -> Advertise:
    """A client's SOLICIT (DUID-LL of ``mac``, IA_NA, asking for DNS servers) relayed by the
    CMTS from ``relay``:547 to ``server``:547 with link-address ``linkaddr`` (the CMTS's
    address in the client's subnet); returns the ADVERTISE it carried back.

    Sent again each second without an answer, as a relay forwards a client's retransmissions
    (bounded by ``tries``); AssertionError if none came."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind((relay, 547))
        sock.settimeout(1.0)
        trid = int.from_bytes(os.urandom(3), "big")
        lladdr = bytes.fromhex(mac.replace(":", ""))
        eui = bytes([lladdr[0] ^ 2]) + lladdr[1:3] + b"\xff\xfe" + lladdr[3:]
        peer = "fe80::" + ":".join(eui[i : i + 2].hex() for i in range(0, 8, 2))
        msg = (
            DHCP6_Solicit(trid=trid)
            / DHCP6OptElapsedTime()
            / DHCP6OptClientId(duid=DUID_LL(lladdr=mac))
            / DHCP6OptOptReq(reqopts=[23])
            / DHCP6OptIA_NA(iaid=1)
        )
        data = bytes(
            DHCP6_RelayForward(linkaddr=linkaddr, peeraddr=peer) / DHCP6OptRelayMsg(message=msg)
        )
        for _ in range(tries):
            sock.sendto(data, (server, 547))
            try:
                answer, _addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = DHCP6_RelayReply(answer)
            inner = reply[DHCP6OptRelayMsg].message
            if isinstance(inner, DHCP6_Advertise) and inner.trid == trid:
                assert DHCP6OptIAAddress in inner, f"ADVERTISE without an address: {inner!r}"
                dns = inner[DHCP6OptDNSServers].dnsservers if DHCP6OptDNSServers in inner else []
                return Advertise(
                    str(inner[DHCP6OptIAAddress].addr), [str(a) for a in dns], time.monotonic()
                )
        raise AssertionError(f"no ADVERTISE from [{server}]:547 for {mac} after {tries} tries")
    finally:
        sock.close()
