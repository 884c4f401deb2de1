"""A throwaway Debian 12 machine with a real systemd as PID 1, for tests/test_realsystemd.py.

The root file system is built once with debootstrap and cached under CACHE_DIR, keyed by the
package list, so later runs cost seconds. Each boot runs on an overlay of the cache (changes
vanish with the machine). machined is absent on the hosts this runs on, so the machine is
booted with ``--register=no --keep-unit`` and entered with ``nsenter``.

Run ``python -m tests.container`` to build the cache ahead of a test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
CACHE_DIR = Path(os.environ.get("PROVHAD_TEST_CACHE", "/var/cache/provhad-test"))
#: what debootstrap installs: enough to boot systemd, with D-Bus and polkit
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "polkitd", "libpam-systemd")
#: installed next, with service starts forbidden (they would start on the host, in the chroot):
#: an NMS Prime slave's services and Python. The build prerequisites of provhad's venv are left
#: out on purpose: scripts/install-slave must install them.
SLAVE_PACKAGES = (
    "mariadb-server",
    "mariadb-client",
    "isc-dhcp-server",
    "bind9",
    "bind9-utils",
    "chrony",
    "python3",
    "python3-venv",
    "ca-certificates",
    "iproute2",
    "procps",
    "less",
)
#: the host's CA bundle (this sandbox intercepts TLS; pip inside the machine needs it)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ContainerError(RuntimeError):
    """The machine could not be built, booted or entered; the message says why."""


def _run(cmd: Sequence[str | Path], timeout: float) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=timeout
    )
    if proc.returncode != 0:
        raise ContainerError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def cache_key() -> str:
    """The cache entry's name: suite plus a hash of the package lists and the mirror."""
    text = "\n".join([SUITE, mirror(), *BOOT_PACKAGES, "--", *SLAVE_PACKAGES])
    return f"{SUITE}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def mirror() -> str:
    """The host's Debian mirror (its apt sources), else deb.debian.org."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        with contextlib.suppress(OSError):
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                    uri = words[1] if words[0] == "URIs:" else words[-3]
                    if "security" not in uri:
                        return uri
    return "http://deb.debian.org/debian"


def missing_tools() -> list[str]:
    """Host commands this module needs that are not installed."""
    tools = ("debootstrap", "systemd-nspawn", "nsenter", "mount", "umount")
    return [t for t in tools if shutil.which(t) is None]


def rootfs() -> Path:
    """The cached root file system, built first if there is none (several minutes)."""
    if os.geteuid() != 0:
        raise ContainerError("booting a container needs root")
    if missing := missing_tools():
        raise ContainerError(f"missing on the host: {', '.join(missing)} (scripts/bootstrap)")
    root = CACHE_DIR / cache_key()
    if (root / ".complete").exists():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same entry
        if not (root / ".complete").exists():
            _build(root)
    return root


def _build(root: Path) -> None:
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    print(f"container: debootstrap {SUITE} into {work} (once; several minutes)", file=sys.stderr)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(BOOT_PACKAGES),
            SUITE,
            work,
            mirror(),
        ],
        timeout=1800,
    )
    policy = work / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # the host's network namespace (no private network): apt reaches the mirror
    chroot: list[str | Path] = [
        "systemd-nspawn",
        "-q",
        "-D",
        work,
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--setenv=DEBIAN_FRONTEND=noninteractive",
    ]
    _run([*chroot, "apt-get", "update", "-q"], timeout=600)
    _run(
        [
            *chroot,
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *SLAVE_PACKAGES,
        ],
        timeout=1800,
    )
    _run([*chroot, "apt-get", "clean"], timeout=120)
    policy.unlink()
    # the services the slave's packages enabled start at each boot (as on a real slave),
    # except dhcpd, which has no interface configured yet
    (work / ".complete").write_text(cache_key() + "\n")
    work.rename(root)


#: the veth pair's addresses: the host side runs the proxy, the machine has no other way out
HOST_ADDRESS, MACHINE_ADDRESS = "10.213.0.1", "10.213.0.2"


class Proxy:
    """A minimal HTTP proxy on the host side of the machine's veth: CONNECT (pip's TLS to
    PyPI) and absolute-URI requests (apt's http mirror). The machine has a private network
    and the host neither forwards nor masquerades; a proxy is what a firewalled slave
    typically has, too."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, address, 0))
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # "GET http://host[:port]/path": servers accept the absolute form
                authority = target.split("/", 3)[2]
                host, _, port = authority.partition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port or 80))
                up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.write_eof()


@dataclass
class Machine:
    """A booted machine: PID 1's host pid, its root as the host sees it, the boot log."""

    name: str
    leader: int
    root: Path
    log: Path
    proxy: str = ""

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the machine, as root, in a login-like environment."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "SYSTEMD_PAGER": "",
            "TERM": "dumb",
        }
        if self.proxy:
            # pip trusts its own CA bundle unless told otherwise; the sandbox's TLS needs the
            # host's (copied in by the caller)
            env |= {
                "http_proxy": self.proxy,
                "https_proxy": self.proxy,
                "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            }
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *cmd],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=env,
            input=input,
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"in {self.name}: {' '.join(cmd)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> str:
        """Run a shell script inside the machine; its stdout."""
        return self.run(
            "bash", "-euo", "pipefail", "-c", script, check=check, timeout=timeout
        ).stdout


def _leader(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The host pid of the machine's PID 1: the descendant of systemd-nspawn whose pid in its
    own namespace is 1."""
    parents: dict[int, int] = {}
    inner: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, StopIteration):
            lines = (entry / "status").read_text().splitlines()
            parents[int(entry.name)] = int(next(ln for ln in lines if ln.startswith("PPid:"))[5:])
            nspid = next(ln for ln in lines if ln.startswith("NSpid:")).split()
            if len(nspid) > 2 and nspid[-1] == "1":
                inner.append(int(entry.name))
    for pid in inner:
        ancestor = pid
        while ancestor > 1:
            ancestor = parents.get(ancestor, 0)
            if ancestor == nspawn.pid:
                return pid
    return None


@contextlib.contextmanager
def booted(
    name: str,
    files: dict[str, Path] | None = None,
    binds: dict[str, Path] | None = None,
    boot_timeout: float = 90,
) -> Iterator[Machine]:
    """Boot a machine on an overlay of the cached root; power it off afterwards.

    ``files`` maps paths inside the machine to host files or directories copied in first;
    ``binds`` to host directories bind-mounted (created if missing: caches that outlive it).
    """
    if len(name) > 12:  # the host's veth is ve-NAME, at most 15 characters
        raise ValueError(f"machine name too long: {name}")
    lower = rootfs()
    with tempfile.TemporaryDirectory(prefix=f"provhad-{name}-", dir="/var/tmp") as scratch:
        upper, work, merged = (Path(scratch) / d for d in ("upper", "work", "root"))
        for d in (upper, work, merged):
            d.mkdir()
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                merged,
            ],
            timeout=30,
        )
        try:
            for inside, source in (files or {}).items():
                target = merged / inside.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
                else:
                    shutil.copy2(source, target)
            for source in (binds or {}).values():
                source.mkdir(parents=True, exist_ok=True)
            options = [f"--bind={source}:{inside}" for inside, source in (binds or {}).items()]
            yield from _boot(name, merged, Path(scratch) / "boot.log", boot_timeout, options)
        finally:
            subprocess.run(["umount", "-l", str(merged)], check=False, timeout=30)


def _boot(
    name: str, root: Path, log: Path, boot_timeout: float, options: list[str]
) -> Iterator[Machine]:
    with open(log, "wb") as out:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "-q",
                "-b",
                "-D",
                str(root),
                f"--machine={name}",
                "--register=no",
                "--keep-unit",
                "--network-veth",
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    leader = None
    try:
        deadline = time.monotonic() + boot_timeout
        while leader is None:
            if nspawn.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited {nspawn.returncode} before booting:\n"
                    + log.read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                raise ContainerError(f"no PID 1 within {boot_timeout} s: {log.read_text()}")
            leader = _leader(nspawn)
            with contextlib.suppress(OSError):
                # nspawn's inner child has pid 1 a moment before it executes systemd
                if leader and Path(f"/proc/{leader}/comm").read_text().strip() != "systemd":
                    leader = None
            if leader is None:
                time.sleep(0.1)  # polling /proc for a process that has no other signal
        machine = Machine(name, leader, root, log)
        state = ""
        while state in ("", "offline") and time.monotonic() < deadline:
            # empty or offline while PID 1 is still setting up its bus
            state = machine.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=boot_timeout
            ).stdout.strip()
        if state not in ("running", "degraded"):
            raise ContainerError(f"the machine's systemd is {state!r}:\n{log.read_text()}")
        veth = f"ve-{name}"
        _run(["ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", veth], timeout=10)
        _run(["ip", "link", "set", veth, "up"], timeout=10)
        machine.sh(
            f"ip addr add {MACHINE_ADDRESS}/30 dev host0 && ip link set host0 up"
            f" && ip route add default via {HOST_ADDRESS}"
        )
        proxy = Proxy(HOST_ADDRESS)
        try:
            machine.proxy = f"http://{HOST_ADDRESS}:{proxy.port}"
            yield machine
        finally:
            proxy.close()
    finally:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn asks PID 1 for a clean shutdown
            try:
                nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(timeout=30)
        if leader is not None:
            # killing PID 1 ends every process of its namespace (nspawn may have died first)
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGKILL)


if __name__ == "__main__":
    print(rootfs())
