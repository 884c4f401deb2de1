"""Slave availability under churn: ``python -m bench.churn [--quick] [--sizes N ...]`` (root).

The HA lab's real failover pair (network namespaces, the master's and the slave's dhcpd) on a
sample network of N modems. One modem changes per second (inserts, hostname, configfile and
network-access updates, soft deletes) while a prober asks the slave's dhcpd 20 times a second
for unchanged modems (controls) and for the changed clients. Modes, one after the other on the
same network: provhad with OMAPI (polling, then the MQTT trigger), provhad restarting dhcpd
(``[dhcpd] omapi = false``) and upstream's per-minute rebuild + restart. Prints one JSON object
(what bench/run.py stores under ``churn``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from bench.prober import ANSWER_TIMEOUT, RESEND_AFTER, Probe, Prober
from provhad import config, mqtt, sample
from provhad.testbed import MariaDB, Mosquitto
from tests.lab.ha import DHCP_DIR, HALab, config_text
from tests.lab.netlab import SLAVE_IP, Topology, ip
from tests.lab.relay import Client

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "tests" / "fixtures" / "schema.sql"
RATE = 20.0  # probes per second
CONTROLS = 20  # unchanged modems probed in turn
POLL_INTERVAL = 1.0
#: change kinds and their weights in the mix
MIX = {"insert": 3, "hostname": 2, "configfile": 2, "access": 1, "delete": 2}
#: a management link from the host into the slave's namespace: provhad runs on the host (the
#: lab database and broker listen on its 127.0.0.1) and reaches the slave's OMAPI through it
MGMT_HOST, MGMT_SLAVE = "169.254.77.1", "169.254.77.2"
GOOD_MAC = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
MODES = ("omapi", "omapi_mqtt", "restart", "upstream")
#: the lab database's InnoDB buffer pool, as a database server of a 500k-modem network would
#: have it: with the test servers' 256 MB, the big tables of 500k modems do not fit, and every
#: fingerprint of a poll or an incremental read would go to the disk
DB_BUFFER_POOL = "1G"


def pct(xs: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank); None without values."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def management_link(net: Topology) -> None:
    """A veth pair host <-> slave namespace (link-local /30; it dies with the namespace)."""
    host_end, slave_end = f"{net.prefix}-m", "mgmt0"
    ip("link", "add", host_end, "type", "veth", "peer", "name", slave_end, "netns", net.ns("slave"))
    ip("addr", "add", f"{MGMT_HOST}/30", "dev", host_end)
    ip("link", "set", host_end, "up")
    ip("addr", "add", f"{MGMT_SLAVE}/30", "dev", slave_end, ns=net.ns("slave"))
    ip("link", "set", slave_end, "up", ns=net.ns("slave"))


class ChurnLab(HALab):
    """The HA lab with the slave's dhcpd started as provhad requires (host records stripped
    from its lease file first), restarts logged, and provhad configured per mode."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.restarts = self.tmp / "restarts.log"
        self.restarts.touch()
        self._scripts: tuple[Path, Path] | None = None

    def dhcpd_argv(self, root: Path) -> list[str]:
        argv = super().dhcpd_argv(root)
        if root != self.slave_root:
            return argv
        strip = 'p=$1; lf=$2; shift 2; "$p" -m provhad.cli strip-hosts "$lf" && exec "$@"'
        leases = str(root / "var/lib/dhcp/dhcpd.leases")
        return ["sh", "-c", strip, "strip", sys.executable, leases, *argv]

    def restart_command(self) -> tuple[Path, Path]:
        """The slave's restart script (logging each call to ``restarts``) and check script."""
        if self._scripts is None:
            restart, check = self.slave_scripts()
            wrapper = self.tmp / "slave-restart-logged.sh"
            log = f"echo $(date +%s.%N) >> {self.restarts}"
            wrapper.write_text(f"#!/bin/sh\n{log}\nexec {restart}\n")
            wrapper.chmod(0o755)
            self._scripts = wrapper, check
        return self._scripts

    def restart_count(self) -> int:
        return len(self.restarts.read_text().split())

    def slave_config(self, render: str = "", rest: str = "") -> Path:
        conf = self.tmp / "slave.toml"
        conf.write_text(config_text(self.db, "slave", self.slave_root, render) + rest)
        return conf

    def start_provhad(self, conf: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        with (self.tmp / "provhad.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "provhad.cli", "run", "--config", str(conf), "--log",
                 "plain", "--log-level", "info"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def stop_slave(self) -> None:
        """provhad (SIGTERM) and the slave's dhcpd stop; the slave's files and provhad's state
        go (the lease file stays: the slave keeps its failover leases across modes)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None
        pidfile = self.slave_root / "var/lib/dhcp/dhcpd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # bounded: waiting for dhcpd to exit
        pidfile.unlink(missing_ok=True)
        shutil.rmtree(self.slave_root / DHCP_DIR, ignore_errors=True)
        shutil.rmtree(self.slave_root / "var/lib/provhad", ignore_errors=True)
        self.notify.drain()


@dataclass
class Change:
    """One committed change, whom it shows on, and what the slave answers once it holds it:
    ``answer:F`` an OFFER with filename F, ``answer`` any OFFER, ``silent`` none, None: the
    change does not touch what dhcpd serves (a configfile: only the TFTP file differs)."""

    kind: str
    at: float
    client: Client
    expect: str | None
    served_at: float | None = None
    probes: int = 0
    #: when it was last probed: pending changes are probed in turn, the longest waiting first
    probed_at: float = float("-inf")


@dataclass
class Targets:
    """The modems the run touches, chosen once per network."""

    controls: list[Client]
    changeable: list[tuple[int, str, str]]  # id, hostname, mac
    blocked: list[tuple[int, str]]  # id, mac
    gi_cm: str
    gi_cpe: str


def cm_client(name: str, mac: str, gi: str) -> Client:
    return Client(name, "cm", mac, mac, gi, "docsis3.0")


def choose_targets(conn: pymysql.Connection, seed: int) -> Targets:
    """Controls, modems to change and blocked modems (for network-access changes), and one
    live CMTS's CM and private CPE routers as the relay's giaddr (hosts match on any network)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT p.type, p.router_ip FROM ippool p JOIN netgw g ON g.id = p.netgw_id"
            " WHERE p.deleted_at IS NULL AND g.deleted_at IS NULL AND p.active = 1"
            " AND p.type IN ('CM', 'CPEPriv') ORDER BY g.id, p.id"
        )
        routers: dict[str, str] = {}
        for typ, router in cur.fetchall():
            routers.setdefault(typ, router)
        live = "deleted_at IS NULL AND public = 0 AND mac REGEXP %s"
        # no modem with an endpoint: the endpoint's `host-identifier option agent.remote-id`
        # is the modem's MAC, so dhcpd still knows the modem after its delete (upstream
        # renders the endpoints of deleted modems too), and the delete never shows as silence
        cur.execute(
            f"SELECT id, hostname, mac FROM modem WHERE {live} AND internet_access = 1"
            " AND id NOT IN (SELECT modem_id FROM endpoint WHERE modem_id IS NOT NULL)"
            " ORDER BY id",
            (GOOD_MAC,),
        )
        modems = list(cur.fetchall())
        cur.execute(
            f"SELECT id, mac FROM modem WHERE {live} AND internet_access = 0 ORDER BY id",
            (GOOD_MAC,),
        )
        blocked = list(cur.fetchall())
    rng = random.Random(seed)
    picked = rng.sample(modems, min(len(modems), CONTROLS + 3000))
    controls = [cm_client(h, m, routers["CM"]) for _i, h, m in picked[:CONTROLS]]
    rng.shuffle(blocked)
    return Targets(controls, picked[CONTROLS:], blocked, routers["CM"], routers["CPEPriv"])


class Driver:
    """Makes the changes (one per call) through the admin connection, like the master's GUI."""

    def __init__(self, conn: pymysql.Connection, targets: Targets, seed: int) -> None:
        self.conn = conn
        self.t = targets
        self.rng = random.Random(seed)
        self.serial = 0

    def _next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def change(self) -> Change:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "access" and not self.t.blocked:
            kind = "hostname"
        k = self._next_serial()
        with self.conn.cursor() as cur:
            if kind == "insert":
                mac = f"02:c4:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:{k & 255:02x}:01"
                name = f"cm-churn{k}-{secrets.token_hex(2)}"
                cur.execute(
                    "INSERT INTO modem (hostname, mac, contract_id, internet_access, public,"
                    " configfile_id, created_at, updated_at) VALUES (%s, %s, %s, 1, 0, %s,"
                    " NOW(), NOW())",
                    (name, mac, sample.CONTRACT_ID0, 3),
                )
                client, expect = cm_client(name, mac, self.t.gi_cm), f"answer:cm/{name}.cfg"
            elif kind == "access":
                mid, mac = self.t.blocked.pop()
                cur.execute(
                    "UPDATE modem SET internet_access = 1, updated_at = NOW() WHERE id = %s",
                    (mid,),
                )
                cpe = f"02:cb:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:{k & 255:02x}:02"
                client, expect = Client(f"cpe-of-{mid}", "cpe", cpe, mac, self.t.gi_cpe), "answer"
            else:
                mid, host, mac = self.t.changeable.pop()
                if kind == "hostname":
                    name = f"{host}-r{k}"
                    cur.execute(
                        "UPDATE modem SET hostname = %s, updated_at = NOW() WHERE id = %s",
                        (name, mid),
                    )
                    client, expect = cm_client(name, mac, self.t.gi_cm), f"answer:cm/{name}.cfg"
                elif kind == "configfile":
                    cur.execute(
                        "UPDATE modem SET configfile_id = IF(configfile_id = 3, 5, 3),"
                        " updated_at = NOW() WHERE id = %s",
                        (mid,),
                    )
                    client, expect = cm_client(host, mac, self.t.gi_cm), None
                else:
                    cur.execute(
                        "UPDATE modem SET deleted_at = NOW(), updated_at = NOW() WHERE id = %s",
                        (mid,),
                    )
                    client, expect = cm_client(host, mac, self.t.gi_cm), "silent"
        self.conn.commit()
        return Change(kind, time.monotonic(), client, expect)


class Run:
    """One mode's churn: the change schedule, the prober's schedule and the outcome."""

    def __init__(self, prober: Prober, controls: list[Client]) -> None:
        self.prober = prober
        self.controls = controls
        self.changes: list[Change] = []
        self.lock = threading.Lock()
        self._seen = 0  # probes already matched against changes

    def pending(self) -> list[Change]:
        with self.lock:
            return [c for c in self.changes if c.expect is not None and c.served_at is None]

    def pick(self, tick: int) -> tuple[Client, bool] | None:
        """Even ticks: a control; odd ticks: of the pending changes (one expecting silence
        only when its client is not in dhcpd's ping-check), the one whose last probe is the
        oldest (a new one first); none such: no probe.

        Picking the change probed least starved a change that had needed many probes: each
        new change came first, and the old one was asked again only once the newer ones were
        served, which made its latency look like minutes. Asking a client again within its
        ping-check, or a control on an odd tick, drew silences of dhcpd's duplicate check."""
        if tick % 2 == 0:
            return self.controls[tick // 2 % len(self.controls)], True
        now = time.monotonic()
        # only silence can be the duplicate check's doing: a change shown by an answer may
        # be asked again at once (a DISCOVER dropped meanwhile shows nothing either way)
        waiting = [
            c
            for c in self.pending()
            if c.expect != "silent" or not self.prober.busy(c.client.name, now)
        ]
        if not waiting:
            return None
        change = min(waiting, key=lambda c: c.probed_at)
        change.probes += 1
        change.probed_at = now
        return change.client, False

    def match(self, now: float) -> None:
        """Mark the changes that the probes settled (with controls around them) show served."""
        probes = list(self.prober.probes.values())
        horizon = now - ANSWER_TIMEOUT - 1.5  # the controls within 1 s after are settled too
        upto = self._seen
        while upto < len(probes) and probes[upto].sent_at < horizon:
            upto += 1
        fresh = probes[self._seen : upto]
        self._seen = upto
        if not fresh:
            return
        answered_controls = [p.sent_at for p in probes if p.control and p.answered_at]
        by_client: dict[str, list[Change]] = {}
        for c in self.pending():
            by_client.setdefault(c.client.name, []).append(c)
        for p in fresh:
            for c in by_client.get(p.client, []):
                if c.served_at is None and p.sent_at > c.at and shows(c, p, answered_controls):
                    # dhcpd settles the answer when the DISCOVER arrives; its OFFER then waits
                    # for ping-check (see ANSWER_TIMEOUT), which is not the change's latency
                    c.served_at = p.sent_at


def shows(c: Change, p: Probe, answered_controls: list[float]) -> bool:
    """Whether probe ``p`` reflects change ``c`` (silence counts only while dhcpd answered a
    control within a second around it: else it is an outage, not the change)."""
    if c.expect == "silent":
        return p.answered_at is None and any(abs(t - p.sent_at) <= 1.0 for t in answered_controls)
    if p.answered_at is None:
        return False
    return c.expect == "answer" or c.expect == f"answer:{p.filename}"


def warm_up(lab: ChurnLab, controls: list[Client], timeout: float) -> float:
    """Probe the controls until the slave answers 20 in a row (it runs, failover is up and it
    holds free leases); returns how long that took."""
    start = time.monotonic()
    prober = Prober(lab.net.ns("cmts"), SLAVE_IP, RATE)
    prober.start(lambda tick: (controls[tick % len(controls)], True))
    try:
        while time.monotonic() - start < timeout:
            settled = sorted(prober.settled(time.monotonic()), key=lambda p: p.sent_at)
            if len(settled) >= 20 and all(p.answered_at for p in settled[-20:]):
                return time.monotonic() - start
            time.sleep(0.5)  # a benchmark harness waiting for a server, bounded
        answered = sum(p.answered_at is not None for p in prober.probes.values())
        raise TimeoutError(
            f"the slave's dhcpd did not answer 20 probes in a row within {timeout} s"
            f" ({answered} of {len(prober.probes)} answered, {len(prober.log)} replies)"
        )
    finally:
        prober.stop()


def upstream_loop(lab: ChurnLab, conf: Path, stop: threading.Event) -> None:
    """Upstream's slave: at every full minute a full rebuild in place, then dhcpd restarts."""
    while not stop.wait(60 - time.time() % 60):
        subprocess.run(
            [sys.executable, str(REPO / "bench/rebuild_once.py"), str(conf), "upstream"],
            cwd=REPO, capture_output=True, check=True,
        )  # fmt: skip
        subprocess.run([str(lab.restart_command()[0])], check=True, timeout=120)


def render(conf: Path) -> None:
    """``provhad render``: the slave's files as the database holds them now."""
    proc = subprocess.run(
        [sys.executable, "-m", "provhad.cli", "render", "--config", str(conf)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"provhad render {conf}: {proc.stdout}{proc.stderr}")


def mode_config(lab: ChurnLab, mode: str, secret: str, broker: Mosquitto | None) -> Path:
    restart, check = lab.restart_command()
    poll = 30.0 if mode == "omapi_mqtt" else POLL_INTERVAL
    rest = f"""
[watch]
poll_interval = {poll}

[safety]
max_shrink_percent = 100

[dhcpd]
restart_command = ["{restart}"]
check_command = ["{check}"]
omapi = {"false" if mode == "restart" else "true"}
omapi_host = "{MGMT_SLAVE}"
"""
    if mode == "omapi_mqtt" and broker is not None:
        rest += f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nreconnect_max = 1\n'
    return lab.slave_config(f'omapi_secret = "{secret}"', rest)


def drain_notify(lab: ChurnLab, stop: threading.Event) -> None:
    """Read provhad's sd_notify messages until ``stop``: the socket holds only
    net.unix.max_dgram_qlen (10 here) datagrams, and once it is full provhad's next notify
    blocks its main loop (seen: no cycle for minutes, wchan unix_wait_for_peer)."""
    while not stop.is_set():
        lab.notify.read(0.2)


def run_mode(
    lab: ChurnLab,
    mode: str,
    targets: Targets,
    driver: Driver,
    seconds: int,
    secret: str,
    broker: Mosquitto | None,
    start_timeout: float,
    keep: Path | None = None,
) -> dict[str, Any]:
    lab.stop_slave()
    conf = mode_config(lab, mode, secret, broker)
    if mode == "upstream":
        render(conf)
        subprocess.run([str(lab.restart_command()[0])], check=True, timeout=120)
    else:
        lab.start_provhad(conf)
        lab.wait_running(1, timeout=start_timeout)
        # the STATUS that said "running" may already say "mqtt ok" (no other one may follow)
        if mode == "omapi_mqtt" and "mqtt ok" not in lab.notify.last_status:
            lab.wait_status("mqtt ok", 60)
    stop = threading.Event()
    drain = threading.Thread(target=drain_notify, args=(lab, stop), daemon=True)
    drain.start()
    try:
        warm = warm_up(lab, targets.controls, start_timeout)
    except BaseException:
        stop.set()
        drain.join(timeout=5)
        raise
    restarts0 = lab.restart_count()
    time.sleep(RESEND_AFTER)  # the warm-up's last DISCOVERs leave dhcpd's ping-check
    prober = Prober(lab.net.ns("cmts"), SLAVE_IP, RATE)
    run = Run(prober, targets.controls)
    cron = None
    if mode == "upstream":
        cron = threading.Thread(target=upstream_loop, args=(lab, conf, stop), daemon=True)
        cron.start()
    trigger = config.MqttConfig(host=broker.host, port=broker.port) if broker else None
    prober.start(run.pick)
    start = time.monotonic()
    try:
        for i in range(seconds):
            time.sleep(max(0.0, start + i - time.monotonic()))  # one change per second
            change = driver.change()
            with run.lock:
                run.changes.append(change)
            if mode == "omapi_mqtt" and trigger is not None:
                asyncio.run(mqtt.trigger(trigger, reason="churn"))
            run.match(time.monotonic())
        churn_end = time.monotonic()
        # drain: the last changes may wait for a restart or upstream's next minute
        while run.pending() and time.monotonic() - churn_end < 90:
            time.sleep(0.5)  # bounded; the prober and the matcher run meanwhile
            run.match(time.monotonic())
        # the last pass: every probe sent until now, once its answer has had its time (a
        # probe still in flight is not silence, which a "silent" change would take it for)
        cutoff = time.monotonic()
        time.sleep(ANSWER_TIMEOUT + 1.6)
        run.match(cutoff + ANSWER_TIMEOUT + 1.5)
        end = time.monotonic()
    finally:
        stopped = time.monotonic()
        stop.set()
        prober.stop()
        drain.join(timeout=5)
        if cron is not None:
            cron.join(timeout=180)
    if keep is not None:
        dump(run, keep / f"probes-{mode}.json")
    return summarize(run, lab.restart_count() - restarts0, warm, end - start, stopped)


def dump(run: Run, path: Path) -> None:
    """Every probe and change of a mode, in wall-clock seconds (to lay beside the journal and
    dhcpd's log): what an unanswered control or a late change is traced from."""
    shift = time.time() - time.monotonic()

    def wall(t: float | None) -> float | None:
        return None if t is None else round(t + shift, 3)

    probes = [
        {
            "client": p.client,
            "control": p.control,
            "sent": wall(p.sent_at),
            "answered": wall(p.answered_at),
            "filename": p.filename,
        }
        for p in run.prober.probes.values()
    ]
    changes = [
        {
            "kind": c.kind,
            "client": c.client.name,
            "mac": c.client.mac,
            "expect": c.expect,
            "at": wall(c.at),
            "served": wall(c.served_at),
            "probes": c.probes,
        }
        for c in run.changes
    ]
    path.write_text(json.dumps({"probes": probes, "changes": changes}))


def judged(run: Run, stopped: float) -> list[Probe]:
    """The control probes whose outcome is known: sent at least ANSWER_TIMEOUT before the
    prober stopped listening (the ones after it had no time to be answered)."""
    return [
        p for p in run.prober.probes.values() if p.control and p.sent_at <= stopped - ANSWER_TIMEOUT
    ]


def summarize(
    run: Run, restarts: int, warm: float, seconds: float, stopped: float
) -> dict[str, Any]:
    controls = judged(run, stopped)
    answered = sum(p.answered_at is not None for p in controls)
    served = [c.served_at - c.at for c in run.changes if c.served_at is not None]
    kinds: dict[str, int] = {}
    for c in run.changes:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    start = run.changes[0].at if run.changes else 0.0
    # the slowest changes and the ones never shown, each with what was expected of it: where a
    # p99 or an unserved count comes from
    late = sorted(
        (c for c in run.changes if c.expect is not None),
        key=lambda c: -(c.served_at - c.at) if c.served_at is not None else float("-inf"),
    )
    slowest = [
        {
            "kind": c.kind,
            "expect": c.expect,
            "client": c.client.name,
            "committed_at_s": round(c.at - start, 2),
            "served_s": None if c.served_at is None else round(c.served_at - c.at, 2),
            "probes": c.probes,
        }
        for c in late[:5]
    ]
    return {
        "answered_share": answered / len(controls) if controls else None,
        "served_p50_s": pct(served, 50),
        "served_p99_s": pct(served, 99),
        "served_max_s": max(served) if served else None,
        "restarts": restarts,
        "changes": len(run.changes),
        "served": len(served),
        "unserved": sum(c.expect is not None and c.served_at is None for c in run.changes),
        "kinds": kinds,
        "control_probes": len(controls),
        "longest_gap_s": longest_gap(controls),
        "warm_up_s": round(warm, 1),
        "seconds": round(seconds, 1),
        "slowest": slowest,
    }


def longest_gap(controls: list[Probe]) -> float:
    """The longest stretch of consecutive unanswered control probes, in seconds."""
    gap, began = 0.0, None
    for p in sorted(controls, key=lambda p: p.sent_at):
        if p.answered_at is None:
            began = p.sent_at if began is None else began
            gap = max(gap, p.sent_at - began + 1 / RATE)
        else:
            began = None
    return round(gap, 2)


@contextlib.contextmanager
def lab_network(work: Path, modems: int) -> Iterator[ChurnLab]:
    """The sample network in a throwaway database, the namespaces, the master's dhcpd."""
    pool = (f"--innodb-buffer-pool-size={DB_BUFFER_POOL}",)
    with (
        MariaDB(work / "db", binlog=True, extra_args=pool) as server,
        server.scratch(SCHEMA, "churn") as scratch,
    ):
        with server.admin(scratch.name, local_infile=True) as conn:
            sample.load(conn, sample.SampleSpec(modems=modems))
        net = Topology()
        try:
            net.create()
            management_link(net)
            lab = ChurnLab(work / "lab", net, scratch)
            try:
                yield lab
            finally:
                lab.stop_slave()
                lab.stop()
        finally:
            net.destroy()


def measure(
    work: Path, modems: int, seconds: int, modes: tuple[str, ...], keep: bool = False
) -> dict[str, Any]:
    """All modes at one size, then the validation times."""
    # dhcpd's start, and in the first mode the primary's first pool balancing: one BNDUPD per
    # lease it hands over (half the free leases) at about 300 a second here
    start_timeout = 240 + modems / 100
    out: dict[str, Any] = {}
    with lab_network(work, modems) as lab, Mosquitto(work / "mqtt") as broker:
        (lab.tmp).mkdir(parents=True, exist_ok=True)
        targets = choose_targets(lab.db.admin, seed=modems)
        for gi in {targets.gi_cm, targets.gi_cpe}:
            lab.net.add_relay_address(gi)
        lab.render_master()
        lab.start_master()
        driver = Driver(lab.db.admin, targets, seed=modems)
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        for mode in modes:
            print(f"== churn {modems}: {mode}", file=sys.stderr, flush=True)
            out[mode] = run_mode(
                lab,
                mode,
                targets,
                driver,
                seconds,
                secret,
                broker,
                start_timeout,
                keep=work if keep else None,
            )
            print(json.dumps(out[mode]), file=sys.stderr, flush=True)
        lab.stop_slave()
    # validation times per change and in full: bench/validation.py (python -m bench.validation)
    return {"modes": out}


def results(per_size: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The key of bench/results.json: ``churn`` {size: {omapi, restart, upstream}} (the omapi
    entry with ``served_p99_mqtt_s``). Validation times: bench/validation.py."""
    churn: dict[str, Any] = {}
    for size, r in per_size.items():
        modes = r["modes"]
        entry = {k: v for k, v in modes.items() if k != "omapi_mqtt"}
        if "omapi" in entry and "omapi_mqtt" in modes:
            mq = modes["omapi_mqtt"]
            entry["omapi"] = dict(entry["omapi"], served_p99_mqtt_s=mq["served_p99_s"], mqtt=mq)
        churn[size] = entry
    return {"churn": churn}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 minutes per mode, 10k modems")
    parser.add_argument("--sizes", type=int, nargs="+", help="modems (default 100k 500k)")
    parser.add_argument("--minutes", type=float, help="churn per mode (default 10, quick 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, every probe)"
    )
    parser.add_argument("--note", help="stored with the results (e.g. other work was running)")
    args = parser.parse_args(argv)
    # stopped by TERM (or INT, ignored in a background job): the lab's cleanup still runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = args.sizes or ([10_000] if args.quick else [100_000, 500_000])
    seconds = int(60 * (args.minutes or (2 if args.quick else 10)))
    work = Path(tempfile.mkdtemp(prefix="provhad-churn-"))
    per_size = {}
    try:
        for n in sizes:
            per_size[str(n)] = measure(
                work / f"s{n}", n, seconds, tuple(args.modes), keep=args.keep
            )
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = results(per_size)
    out["churn_settings"] = {
        "minutes": seconds / 60,
        "answer_timeout_s": ANSWER_TIMEOUT,
        "probe_rate": RATE,
        "poll_interval_s": POLL_INTERVAL,
        "db_buffer_pool": DB_BUFFER_POOL,
        "mix": MIX,
        "sizes": [str(n) for n in sizes],
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.note:
        out["churn_settings"]["note"] = args.note
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
