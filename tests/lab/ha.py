"""The HA lab's nodes: the lab database, the master's dhcpd, the slave's provhad + dhcpd, TFTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provhad import omapi
from provhad.config import PathsConfig, RenderConfig
from provhad.omapi import OmapiClient
from provhad.state import STATE_FILE
from provhad.testbed import NotifyListener, ScratchDatabase
from tests.lab.netlab import MASTER_IP, SLAVE_IP, SLAVE_IP6, Topology, ip
from tests.lab.relay import Client
from tests.rows import modem, pool, provbase, provha
from tests.test_kea import KEA, ep6, pool6

REPO = Path(__file__).resolve().parents[2]
DHCP_DIR = "etc/dhcp-nmsprime"
CMTS_ID = 1
#: giaddr per device class, as a CMTS with cable helper-address per class sends them
GI_CM, GI_CPE, GI_MTA = "10.0.0.1", "100.64.0.1", "100.96.0.1"
#: the router of the public CPE pool (same shared network: CPEs of public modems land there)
GI_PUB = "198.18.0.1"
PUBLIC_NET = "198.18.0."
PUBLIC_MODEMS = 2  # the first modems are public (their CPEs get CPEPub addresses)
POOLS = 4  # v4 pools, each balanced between the peers
CHANGED_DNS = "192.0.2.53"  # the private CPE pool's DNS server after the change in the database
#: DHCPv6 (Kea on the slave): one v6 pool and one reserved endpoint on the CMTS
V6_POOL, V6_ENDPOINT = pool6(11, CMTS_ID, 1), ep6(1, 1, 5)
#: where dhcpd (log.conf) and the rendered named-ddns.sh look, as on a real node (not under
#: [paths] root: see HALab.slave_view)
DDNS_SCRIPT, CPE_KEY = PathsConfig().named_ddns_script, PathsConfig().ddns_cpe_key
NSUPDATE_LOG_DIR = "/var/log/nmsprime"  # provhad.render's log_file for nsupdate's output
#: the peer name templates/failover.conf.j2 declares
FAILOVER_PEER = "dhcpd-failover"
FAILOVER = re.compile(r"failover peer \S+: I move from (\S+) to (\S+)")


class LogWatch:
    """A growing log file, read from a mark on; waits are bounded and fail with the tail."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def mark(self) -> int:
        return len(self.text())

    def wait(self, pattern: str, since: int = 0, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.text(), since)
            if found:
                return found
            if time.monotonic() > deadline:
                tail = "\n".join(self.text()[since:].splitlines()[-25:])
                raise AssertionError(f"{self.path.name}: no /{pattern}/ in {timeout} s:\n{tail}")
            time.sleep(0.05)  # polling a log file for a line; bounded by the deadline

    def wait_count(
        self, pattern: str, count: int, since: int = 0, timeout: float = 60.0
    ) -> list[re.Match[str]]:
        """Wait until ``pattern`` occurs ``count`` times after ``since``; returns the matches."""
        deadline = time.monotonic() + timeout
        while len(found := list(re.finditer(pattern, self.text()[since:]))) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path.name}: {len(found)} of {count} /{pattern}/")
            time.sleep(0.05)  # polling a log file; bounded by the deadline
        return found

    def states(self) -> list[str]:
        """Failover states this dhcpd moved to, in order."""
        return [m.group(2) for m in FAILOVER.finditer(self.text())]


def lease_states(path: Path) -> Counter[str]:
    """Binding states in a dhcpd lease file (the last record of each address wins)."""
    latest: dict[str, str] = {}
    text = path.read_text(errors="replace") if path.exists() else ""
    for block in re.finditer(r"^lease (\S+) \{(.*?)^\}", text, re.S | re.M):
        state = re.search(r"^\s*binding state (\S+);", block.group(2), re.M)
        if state:
            latest[block.group(1)] = state.group(1)
    return Counter(latest.values())


def new_pair_leases(path: Path) -> None:
    """A lease file for one peer of a new failover pair: no leases, both peers ``normal``.

    Without a state record both peers start in ``recover``: each sends UPDREQALL (twice: on the
    peer's state and on its own move to recover) and answers with its whole all-FREE pool, one
    stream per direction at max-unacked-updates 10, while the primary, once in normal, hands
    out BACKUP leases. The secondary serves nothing meanwhile, the primary rejects its FREE
    stream ("incoming update is less critical than outgoing update": failover.c,
    failover_lease_is_better, the primary's own pending update wins), and the peers can end
    up disagreeing about who owns a lease ("peer holds all free leases", the secondary's
    "balanced pool ... lts -N"), with the next pool check max-balance (3600 s) away. Two new
    servers hold the same (empty) database, which is what ``normal`` on both sides asserts:
    no full exchange, the primary balances once and the secondary takes each BACKUP update.
    An existing file (a restart) is left as dhcpd wrote it."""
    if path.exists() and path.stat().st_size:
        return
    at = time.strftime("%w %Y/%m/%d %H:%M:%S", time.gmtime())
    path.write_text(
        f'failover peer "{FAILOVER_PEER}" state {{\n'
        f"  my state normal at {at};\n  peer state normal at {at};\n}}\n"
    )


def insert(db: ScratchDatabase, table: str, row: dict[str, object]) -> None:
    cols = ", ".join(f"`{c}`" for c in row)
    marks = ", ".join(["%s"] * len(row))
    with db.admin.cursor() as cur:
        cur.execute(f"INSERT INTO `{table}` ({cols}) VALUES ({marks})", list(row.values()))


def seed(db: ScratchDatabase, modems: int, mtas: int) -> list[Client]:
    """The lab network: one CMTS with a CM, a private and a public CPE, and an MTA pool, a v6
    pool and a v6 endpoint; the first PUBLIC_MODEMS modems are public. Returns the clients."""
    insert(db, "provha", provha())
    insert(db, "provbase", provbase())
    insert(db, "provvoip", {"id": 1, "mta_domain": "mta.nmsprime.test"})
    insert(db, "netgw", {"id": CMTS_ID, "hostname": "cmts-lab", "type": "cmts"})
    no_dns = {"dns1_ip": None}  # the global option (own node first) applies
    for row in (
        pool(1, CMTS_ID, "CM", "10.0.0.0", "/24", "10.0.0.10", "10.0.0.250", GI_CM, **no_dns),
        pool(2, CMTS_ID, "CPEPriv", "100.64.0.0", "/24", "100.64.0.10", "100.64.0.250", GI_CPE,
             **no_dns),
        pool(3, CMTS_ID, "MTA", "100.96.0.0", "/24", "100.96.0.10", "100.96.0.250", GI_MTA,
             **no_dns),
        pool(4, CMTS_ID, "CPEPub", "198.18.0.0", "/24", "198.18.0.10", "198.18.0.250", GI_PUB,
             **no_dns),
    ):  # fmt: skip
        insert(db, "ippool", row)
    insert(db, "ippool", V6_POOL | {"version": "6"})
    insert(db, "endpoint", V6_ENDPOINT | {"version": "6"})
    clients: list[Client] = []
    for i in range(modems):
        cm_mac = f"00:10:18:00:{i // 256:02x}:{i % 256:02x}"
        insert(db, "modem", modem(100000 + i, cm_mac, public=int(i < PUBLIC_MODEMS)))
        clients.append(Client(f"cm-{100000 + i}", "cm", cm_mac, cm_mac, GI_CM, "docsis3.0"))
        clients.append(
            Client(f"cpe-{i}", "cpe", f"00:e0:4c:01:{i // 256:02x}:{i % 256:02x}", cm_mac, GI_CPE)
        )
        if i < mtas:
            mta_mac = f"00:15:ce:02:{i // 256:02x}:{i % 256:02x}"
            insert(db, "mta", {"id": 300000 + i, "modem_id": 100000 + i, "mac": mta_mac})
            clients.append(Client(f"mta-{300000 + i}", "mta", mta_mac, cm_mac, GI_MTA, "pktc"))
    return clients


def is_public(c: Client) -> bool:
    """Whether the client's lease is from the public CPE pool."""
    return c.ip is not None and c.ip.startswith(PUBLIC_NET)


def mangle(key: bytes, mac: str) -> str:
    """The host label named-ddns.sh derives from a CPE's MAC (independently restated here)."""
    digest = hmac.new(key, bytes.fromhex(mac.replace(":", "")), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:6].lower()


def kea_main_config(gateways: Path) -> str:
    """Upstream's dhcp6-nmsprime.conf layout (shared-networks from gateways6.conf), bound to the
    slave's eth0 address; leases and the server DUID stay in memory (nothing outside tmp)."""
    head = {
        "interfaces-config": {"interfaces": [f"eth0/{SLAVE_IP6}"]},
        "lease-database": {"type": "memfile", "persist": False},
        "server-id": {"type": "LL", "persist": False},
    }
    members = json.dumps(head)[1:-1]
    return f'{{"Dhcp6": {{{members}, "shared-networks": [ <?include "{gateways}"?> ]}}}}\n'


def restart_script(
    path: Path,
    pidfile: Path,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    before: list[list[str]] | None = None,
) -> None:
    """A script that stops the process in ``pidfile`` (TERM, KILL after 5 s), runs the
    commands ``before`` (a failing one stops the script, as a failing ExecStartPre keeps
    systemd from starting the unit) and starts ``argv`` detached, output to ``log``: what
    ``systemctl restart`` does on a host."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    pre = "".join(f"{shlex.join(cmd)} >> {shlex.quote(str(log))} 2>&1 || exit 1\n"
                  for cmd in before or [])  # fmt: skip
    path.write_text(f"""#!/bin/sh
PF={shlex.quote(str(pidfile))}
if [ -s "$PF" ]; then
  pid=$(cat "$PF")
  kill "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    [ $i -eq 100 ] && kill -9 "$pid"
    [ $i -gt 200 ] && exit 1
    sleep 0.05
  done
fi
{pre}{exports}echo "=== restart by provhad" >> {shlex.quote(str(log))}
setsid {shlex.join(argv)} < /dev/null >> {shlex.quote(str(log))} 2>&1 &
echo $! > "$PF"
""")
    path.chmod(0o755)


def configfiles(root: Path, clients: list[Client]) -> None:
    """cm/cm-<id>.cfg and mta/mta-<id>.cfg under ROOT/tftpboot, readable by in.tftpd's user."""
    for sub in ("cm", "mta"):
        (root / "tftpboot" / sub).mkdir(parents=True, exist_ok=True)
    for c in clients:
        if c.kind in ("cm", "mta"):
            path = root / "tftpboot" / c.kind / f"{c.name}.cfg"
            # more than one 512-byte TFTP block
            path.write_bytes(f"# DOCSIS config of {c.name}\n".encode() * 40)
    for d in (root, root / "tftpboot", *(root / "tftpboot").iterdir()):
        d.chmod(0o755)
    for f in (root / "tftpboot").rglob("*.cfg"):
        f.chmod(0o644)


def config_text(db: ScratchDatabase, role: str, root: Path, extra: str = "") -> str:
    return f"""
[database]
hosts = ["{db.host}:{db.port}"]
user = "{db.ro_user}"
password = "{db.ro_password}"
name = "{db.name}"
connect_timeout = 2

[provha]
own_state = "{role}"

[paths]
root = "{root}"

[render]
fqdn = "nms{role}.nmsprime.test"
{extra}
"""


@dataclass
class HALab:
    """Both provisioning nodes of the lab on a ``Topology``."""

    tmp: Path
    net: Topology
    db: ScratchDatabase
    clients: list[Client] = field(default_factory=list)
    master_proc: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    notify: NotifyListener = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.master_root = self.tmp / "master"
        self.slave_root = self.tmp / "slave"
        self.hook_log = self.tmp / "ddns-hook.calls"  # one line per hook call: its argv
        self.nsupdate_log = self.tmp / "nsupdate.calls"  # argv and stdin of each nsupdate
        self.kea_log = LogWatch(self.tmp / "slave-kea.log")
        self.kea = Path(KEA) if Path(KEA).exists() else None
        self.cpe_key = secrets.token_bytes(32)
        for root in (self.master_root, self.slave_root):
            (root / "var/lib/dhcp").mkdir(parents=True, exist_ok=True)
            new_pair_leases(root / "var/lib/dhcp/dhcpd.leases")
        self.master_log = LogWatch(self.tmp / "master-dhcpd.log")
        self.slave_log = LogWatch(self.tmp / "slave-dhcpd.log")
        self.notify = NotifyListener(self.tmp / "notify.sock")
        self.provhad_log = LogWatch(self.tmp / "provhad.log")
        #: the slave's OMAPI key ([render] omapi_secret: failover.conf declares it to dhcpd)
        self.omapi_secret = base64.b64encode(secrets.token_bytes(16)).decode()
        #: where provhad reaches the slave dhcpd's OMAPI (a link into the slave namespace:
        #: on a real node, 127.0.0.1); set by start_daemon
        self.omapi_host = ""
        self.restart_script = self.tmp / "slave-restart.sh"

    def dhcp_file(self, node: str, name: str) -> Path:
        return (self.master_root if node == "master" else self.slave_root) / DHCP_DIR / name

    def dhcpd_argv(self, root: Path) -> list[str]:
        return [
            "dhcpd", "-f", "-d", "-4",
            "-cf", str(root / DHCP_DIR / "dhcpd.conf"),
            "-lf", str(root / "var/lib/dhcp/dhcpd.leases"),
            "-pf", str(root / "var/lib/dhcp/dhcpd.pid"),
            "eth0",
        ]  # fmt: skip

    def wait_balanced(
        self, since: int, pools: int, share: float = 1.0, timeout: float = 60.0
    ) -> int:
        """Wait until the slave holds ``share`` of the backup leases the master's pool balancing
        gave it (the master's "balanced pool" lines after ``since``); returns how many."""
        lines = self.master_log.wait_count(r"balanced pool .* backup (\d+)", pools, since, timeout)
        want = int(share * sum(int(m.group(1)) for m in lines[-pools:]))
        leases = self.slave_root / "var/lib/dhcp/dhcpd.leases"
        deadline = time.monotonic() + timeout
        while (have := lease_states(leases)["backup"]) < want:
            assert time.monotonic() < deadline, f"slave has {have} of {want} backup leases"
            time.sleep(0.05)  # polling the slave's lease file; bounded by the deadline
        return want

    # --- master ---

    def render_master(self) -> str:
        conf = self.tmp / "master.toml"
        conf.write_text(config_text(self.db, "master", self.master_root))
        proc = subprocess.run(
            [sys.executable, "-m", "provhad.cli", "render", "--config", str(conf)],
            capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def start_master(self) -> int:
        """Start the master's dhcpd; returns the log mark it starts at."""
        mark = self.master_log.mark()
        with self.master_log.path.open("ab") as log:
            log.write(f"=== start at {time.monotonic() - self.started:.2f}\n".encode())
            log.flush()
            self.master_proc = subprocess.Popen(
                self.net.exec_argv("master", *self.dhcpd_argv(self.master_root)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return mark

    def cut_master(self, up: bool) -> None:
        """Unplug (or plug in) the master's cable: packets are lost, no connection closes."""
        ip("link", "set", "p-master", "up" if up else "down", ns=self.net.ns("sw"))

    def kill_master(self) -> None:
        """The master dies (SIGKILL, no goodbye to its peer)."""
        assert self.master_proc is not None
        self.master_proc.send_signal(signal.SIGKILL)
        self.master_proc.wait(timeout=30)

    # --- slave ---

    def slave_view(self) -> tuple[list[str], dict[str, str]]:
        """What the slave's dhcpd sees at the host paths its files name, and the command that
        mounts it: read-only overlays on /etc and /var/log in dhcpd's own mount namespace
        (``ip netns exec`` makes one), so nothing changes on the host.

        log.conf calls /etc/dhcp-nmsprime/named-ddns.sh and that reads /etc/named-ddns-cpe.key,
        whatever ``[paths] root`` is (provhad renders them without the root): here the first
        is a recorder that logs its argv (and how long it took) and runs the script provhad
        rendered, the second the lab's key. nsupdate's output goes to /var/log/nmsprime, a lab
        directory. A fake nsupdate first on dhcpd's PATH records what the script sends.
        Returns the command prefix that mounts the view and dhcpd's environment.
        """
        view = self.tmp / "slave-view"
        etc, log = view / "etc", view / "log"
        hook = etc / Path(DDNS_SCRIPT).relative_to("/etc")
        hook.parent.mkdir(parents=True, exist_ok=True)
        rendered = self.slave_root / Path(DDNS_SCRIPT).relative_to("/")
        hook.write_text(f"""#!/bin/sh
echo "$*" >> {self.hook_log}
start=$(date +%s%N)
{rendered} "$@"
rc=$?
echo "$(( ($(date +%s%N) - start) / 1000000 )) $3" >> {self.hook_log}.ms
exit $rc
""")
        hook.chmod(0o755)
        (etc / Path(CPE_KEY).relative_to("/etc")).write_text(self.cpe_key.hex() + "\n")
        # ip netns exec's bind mount of /etc/netns/NS/resolv.conf is under the overlay
        netns_etc = Path("/etc/netns") / self.net.ns("slave")
        (etc / "resolv.conf").write_bytes((netns_etc / "resolv.conf").read_bytes())
        log.mkdir(parents=True, exist_ok=True)
        (self.tmp / "nsupdate-log").mkdir(exist_ok=True)
        (log / Path(NSUPDATE_LOG_DIR).relative_to("/var/log")).symlink_to(self.tmp / "nsupdate-log")
        fakebin = self.tmp / "fakebin"
        fakebin.mkdir(exist_ok=True)
        nsupdate = fakebin / "nsupdate"
        nsupdate.write_text(
            "#!/bin/sh\n# stands in for BIND's nsupdate: records its argv and the update\n"
            f'{{ echo "nsupdate $*"; cat; echo "."; }} >> {self.nsupdate_log}\n'
        )
        nsupdate.chmod(0o755)
        path = f"{fakebin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        mounts = (
            f"mount -t overlay lab-etc -o lowerdir={etc}:/etc /etc"
            f" && mount -t overlay lab-log -o lowerdir={log}:/var/log /var/log"
        )
        return ["sh", "-c", mounts + ' && exec "$@"', "sh"], {"PATH": path}

    @property
    def slave_leases(self) -> Path:
        return self.slave_root / "var/lib/dhcp/dhcpd.leases"

    @property
    def slave_pidfile(self) -> Path:
        return self.slave_root / "var/lib/dhcp/dhcpd.pid"

    def slave_scripts(self) -> tuple[Path, Path]:
        """The slave dhcpd's restart script (``provhad strip-hosts`` on its lease file before
        the start, as systemd/dhcpd-provhad.conf's ExecStartPre) and its check script."""
        pidfile = self.slave_pidfile
        restart, check = self.restart_script, self.tmp / "slave-check.sh"
        view, env = self.slave_view()
        strip = [sys.executable, "-m", "provhad.cli", "strip-hosts", str(self.slave_leases)]
        restart_script(
            restart,
            pidfile,
            self.net.exec_argv("slave", *view, *self.dhcpd_argv(self.slave_root)),
            self.slave_log.path,
            env,
            before=[strip],
        )
        check.write_text(f'#!/bin/sh\nkill -0 "$(cat {pidfile})" 2>/dev/null\n')
        check.chmod(0o755)
        return restart, check

    def kea_script(self) -> Path:
        """kea-dhcp6 in the slave namespace on the Kea files provhad renders (restarted by
        provhad's ``services.kea_restart_command`` when they change)."""
        assert self.kea is not None
        run = self.tmp / "kea-run"
        run.mkdir(exist_ok=True)
        main = self.tmp / "kea-dhcp6.conf"
        main.write_text(kea_main_config(self.slave_root / "etc/kea/gateways6.conf"))
        script = self.tmp / "kea-restart.sh"
        restart_script(
            script,
            self.tmp / "kea.pid",
            self.net.exec_argv("slave", self.kea, "-c", main),
            self.kea_log.path,
            {"KEA_PIDFILE_DIR": str(run), "KEA_LOCKFILE_DIR": str(run)},
        )
        return script

    def start_daemon(self) -> None:
        """Write the slave's provhad config and scripts, start ``provhad run`` on them."""
        restart, check = self.slave_scripts()
        self.omapi_host = self.net.link_host("slave")
        conf = self.tmp / "slave.toml"
        v6, kea = f'omapi_secret = "{self.omapi_secret}"', ""
        if self.kea is not None:
            v6 += "\ndhcpv6 = true"
            kea = f"""
[validate]
kea_dhcp6 = "{self.kea}"

[services]
kea_restart_command = ["{self.kea_script()}"]
"""
        conf.write_text(
            config_text(self.db, "slave", self.slave_root, v6)
            + kea
            + f"""
[watch]
poll_interval = 0.2
quiet_period = 0.3
max_delay = 3
min_restart_interval = 0

[safety]
max_shrink_percent = 100

[dhcpd]
restart_command = ["{restart}"]
check_command = ["{check}"]
check_attempts = 3
check_interval = 0.3
omapi_host = "{self.omapi_host}"
"""
        )
        self.spawn_daemon()

    def spawn_daemon(self) -> None:
        """Start ``provhad run`` on the slave's config (again, after :meth:`kill_daemon`)."""
        conf = self.tmp / "slave.toml"
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        with (self.tmp / "provhad.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "provhad.cli", "run", "--config", str(conf), "--log",
                 "plain"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill_daemon(self) -> None:
        """provhad dies (SIGKILL: no cleanup, its state file as it last saved it)."""
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait(timeout=30)
        self.notify.drain()

    def provhad_state(self) -> dict[str, Any]:
        """The slave provhad's state file (state.json), as last saved."""
        path = self.slave_root / Path(PathsConfig().state_dir).relative_to("/") / STATE_FILE
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def slave_pid(self) -> int:
        """The running slave dhcpd's PID (its pid file; asserted alive)."""
        pid = int(self.slave_pidfile.read_text())
        os.kill(pid, 0)
        return pid

    def restart_slave_behind(self) -> None:
        """Restart the slave's dhcpd with its restart script, behind provhad's back (an
        operator's ``systemctl restart``); the script's log line says "by provhad"."""
        subprocess.run([str(self.restart_script)], check=True, timeout=60)

    def omapi(self) -> OmapiClient:
        """An OMAPI client of the slave's dhcpd with its key (for the test to look)."""
        return OmapiClient(self.omapi_host, omapi.PORT, RenderConfig().omapi_key_name,
                           self.omapi_secret)  # fmt: skip

    def daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def wait_status(self, text: str, timeout: float = 90) -> str:
        return self.notify.wait_status(text, timeout, self.daemon_alive)

    def wait_running(self, generation: int, timeout: float = 90) -> tuple[float, str]:
        """Wait until STATUS says generation ``generation`` is live and dhcpd runs it (no
        restart pending); returns when (monotonic) and that STATUS."""
        live = f"live gen {generation},"
        msg = self.notify.wait(
            lambda m: live in m.get("STATUS", "") and "restart pending" not in m["STATUS"],
            timeout,
            self.daemon_alive,
        )
        assert "FAILED" not in msg["STATUS"], msg
        return time.monotonic(), msg["STATUS"]

    def hook_calls(self) -> list[str]:
        """The DDNS hook's calls so far (argv: CPE MAC, modem MAC, IP, 0 = add / 1 = delete)."""
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def wait_hook_call(self, call: str, timeout: float = 30) -> list[str]:
        """Wait until the hook was called with ``call`` (its argv); returns all calls."""
        deadline = time.monotonic() + timeout
        while call not in (calls := self.hook_calls()):
            assert time.monotonic() < deadline, f"no hook call {call!r}; calls: {calls[-10:]}"
            time.sleep(0.05)  # polling the recorder's file; bounded by the deadline
        return calls

    def cpe_name(self, mac: str) -> str:
        """The DNS name named-ddns.sh gives a public CPE (the lab's key, provbase's domain)."""
        return f"{mangle(self.cpe_key, mac)}.cpe.{provbase()['domain_name']}."

    def hook_ms(self) -> dict[str, list[int]]:
        """How long each hook call took (dhcpd waits for it), in ms, for public and private
        CPE addresses."""
        out: dict[str, list[int]] = {"public": [], "private": []}
        path = Path(f"{self.hook_log}.ms")
        for line in path.read_text().splitlines() if path.exists() else []:
            ms, addr = line.split()
            out["public" if addr.startswith(PUBLIC_NET) else "private"].append(int(ms))
        return out

    def nsupdates(self) -> str:
        """What the fake nsupdate received (argv and stdin of each call)."""
        return self.nsupdate_log.read_text() if self.nsupdate_log.exists() else ""

    def sql(self, statement: str, *args: object) -> None:
        with self.db.admin.cursor() as cur:
            cur.execute(statement, args)

    def start_tftpd(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.net.exec_argv("slave", "in.tftpd", "-L", "-u", "nobody", "-a", f"{SLAVE_IP}:69",
                               "-s", self.slave_root / "tftpboot"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.tmp / "tftpd.log").open("ab"), start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop provhad (SIGTERM, then SIGKILL); the namespaces' processes die with them."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.master_proc is not None and self.master_proc.poll() is None:
            self.master_proc.kill()
            self.master_proc.wait()
        self.notify.close()


__all__ = ["GI_CM", "GI_CPE", "GI_MTA", "GI_PUB", "MASTER_IP", "SLAVE_IP", "HALab", "LogWatch"]
