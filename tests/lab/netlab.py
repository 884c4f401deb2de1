"""Network namespaces for the HA lab: a switch namespace with a bridge and three nodes.

Everything lives in namespaces this module creates (named ``<prefix>-<node>``), so no packet
reaches the host's own interfaces. ``Topology.destroy`` removes them and every process in them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
SUBNET = "172.20.0.0/22"
MASTER_IP, SLAVE_IP, CMTS_IP = "172.20.0.1", "172.20.0.2", "172.20.0.10"
#: IPv6 on the same bridge (DHCPv6: the CMTS relays to Kea on the slave)
MASTER_IP6, SLAVE_IP6, CMTS_IP6 = "fd00:20::1", "fd00:20::2", "fd00:20::10"


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (in namespace ``ns``); a failure raises with ip's message."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can (creates and deletes one)."""
    if os.geteuid() != 0:
        return "the HA lab needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the HA lab needs iproute2's ip"
    probe = f"phprobe-{secrets.token_hex(3)}"
    try:
        if ip("netns", "add", probe, check=False).returncode != 0:
            return "ip netns is unavailable"
        if ip("link", "add", "br0", "type", "bridge", ns=probe, check=False).returncode != 0:
            return "Linux bridges are unavailable"
        if (
            ip(
                "link", "add", "va", "type", "veth", "peer", "name", "vb", ns=probe, check=False
            ).returncode
            != 0
        ):
            return "veth interfaces are unavailable"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def overlay_unavailable() -> str | None:
    """Why a read-only overlay cannot be mounted in a private mount namespace, or None."""
    if shutil.which("unshare") is None:
        return "the HA lab needs util-linux's unshare"
    with tempfile.TemporaryDirectory(prefix="phprobe-") as tmp:
        top, under = Path(tmp, "top"), Path(tmp, "under")
        top.mkdir()
        under.mkdir()
        mount = f"mount -t overlay probe -o lowerdir={top}:{under} {under}"
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        return f"the HA lab needs overlayfs mounts: {proc.stderr.strip()}"
    return None


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch the calling thread into namespace ``name``; sockets made inside stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def udp_socket(ns: str, bind: tuple[str, int]) -> socket.socket:
    """A UDP socket created in namespace ``ns`` and bound to ``bind``."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(bind)
    return sock


@dataclass
class Topology:
    """Namespaces master, slave and cmts on a bridge in a fourth (switch) namespace."""

    prefix: str = field(default_factory=lambda: f"phl{secrets.token_hex(3)}")
    relay_addresses: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def create(self) -> None:
        """Build the network; on an error the caller still calls ``destroy``."""
        sw = self.ns("sw")
        for node in ("sw", "master", "slave", "cmts"):
            ip("netns", "add", self.ns(node))
            self.created.append(self.ns(node))
            # `ip netns exec` bind-mounts /etc/netns/NS/* over /etc: name lookups (dhcpd's
            # `option ntp-servers ntp.org`) fail at once on lo instead of timing out
            etc = Path("/etc/netns") / self.ns(node)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            ip("link", "set", "lo", "up", ns=self.ns(node))
        ip("link", "add", "br0", "type", "bridge", ns=sw)
        ip("link", "set", "br0", "up", ns=sw)
        for node, addr, addr6 in (
            ("master", MASTER_IP, MASTER_IP6),
            ("slave", SLAVE_IP, SLAVE_IP6),
            ("cmts", CMTS_IP, CMTS_IP6),
        ):
            port = f"p-{node}"
            ip(
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.ns(node),
                ns=sw,
            )
            ip("link", "set", port, "master", "br0", ns=sw)
            ip("link", "set", port, "up", ns=sw)
            ip("addr", "add", f"{addr}/22", "dev", "eth0", ns=self.ns(node))
            # nodad: usable at once, no wait for duplicate address detection
            ip("addr", "add", f"{addr6}/64", "dev", "eth0", "nodad", ns=self.ns(node))
            ip("link", "set", "eth0", "up", ns=self.ns(node))
        for node in ("master", "slave"):
            # replies to the relay addresses (giaddr) go back through the CMTS
            ip("route", "add", "default", "via", CMTS_IP, ns=self.ns(node))
        for addr in self.relay_addresses:
            self.add_relay_address(addr)

    def link_host(self, node: str) -> str:
        """A veth pair from this (the host's) namespace into ``node``'s, as the host reaches a
        service on its own loopback (provhad to its dhcpd's OMAPI); returns ``node``'s address
        on it. Deleting the namespace takes the pair with it. A random /30 of 198.19.0.0/16,
        away from the lab's pools and from tests/test_omapi.py's 198.18.N.0/24."""
        net = f"198.19.{1 + secrets.randbelow(254)}.{4 * secrets.randbelow(64)}"
        base = int(net.rsplit(".", 1)[1])
        prefix = net.rsplit(".", 1)[0]
        here, there = f"{prefix}.{base + 1}", f"{prefix}.{base + 2}"
        iface = f"{self.prefix}-{node[:2]}"
        ip("link", "add", iface, "type", "veth", "peer", "name", "host0", "netns", self.ns(node))
        ip("addr", "add", f"{there}/30", "dev", "host0", ns=self.ns(node))
        ip("link", "set", "host0", "up", ns=self.ns(node))
        ip("addr", "add", f"{here}/30", "dev", iface)
        ip("link", "set", iface, "up")
        return there

    def add_relay_address(self, addr: str) -> None:
        ip("addr", "add", f"{addr}/32", "dev", "lo", ns=self.ns("cmts"))

    def pids(self, node: str) -> list[int]:
        out = ip("netns", "pids", self.ns(node), check=False).stdout
        return [int(p) for p in out.split()]

    def destroy(self) -> None:
        """Kill every process left in the namespaces, then delete them."""
        for ns in self.created:
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in self.created:
            deadline = time.monotonic() + 10
            while ip("netns", "pids", ns, check=False).stdout.split():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # bounded: waiting for the kernel to reap the killed processes
            ip("netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self.created.clear()
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty: it may hold other namespaces' files

    def exec_argv(self, node: str, *argv: str | Path) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *map(str, argv)]
