"""systemd/: the unit's sandbox score and syntax, sysusers/tmpfiles entries, and the polkit rule
(executed by node with a stand-in for polkit's JavaScript API)."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad import cli

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "provhad.service"
VENV_PROVHAD = Path(sys.executable).parent / "provhad"

analyze = shutil.which("systemd-analyze") or "systemd-analyze"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120
    )


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@needs_analyze
def test_security_exposure_is_ok() -> None:
    proc = run(analyze, "security", "--offline=true", "--no-pager", UNIT)
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze is older than 250 (no --offline)")
    m = re.search(r"Overall exposure level for provhad\.service: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m[1]) <= 1.5, proc.stdout
    assert m[2] in ("OK", "SAFE", "PERFECT")
    # the same limit as systemd's own gate (0..100 scale: 15 = 1.5)
    assert run(analyze, "security", "--offline=true", "--threshold=15", UNIT).returncode == 0


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    """Clean apart from ExecStart's /opt/provhad venv, which exists only once installed: a
    copy that points at this checkout's venv instead must verify without a word."""
    text = UNIT.read_text()
    installed = "=/opt/provhad/venv/bin/provhad "
    assert text.count(installed) == 2  # ExecStart=, ExecReload=
    copy = tmp_path / "provhad.service"
    copy.write_text(text.replace(installed, f"={VENV_PROVHAD} "))
    proc = run(analyze, "verify", "--man=no", copy)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    if not Path("/opt/provhad/venv/bin/provhad").exists():
        proc = run(analyze, "verify", "--man=no", UNIT)
        complaints = [line for line in proc.stderr.splitlines() if line.strip()]
        assert complaints == 2 * [
            "provhad.service: Command /opt/provhad/venv/bin/provhad is not executable: "
            "No such file or directory"
        ]


def test_unit_essentials() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and int(s["WatchdogSec"][0]) > 0
    # systemd 239..252 have no Type=notify-reload: provhad reload makes the reload synchronous
    assert s["ExecReload"] == [
        "/opt/provhad/venv/bin/provhad reload --config /etc/provhad/provhad.toml --pid $MAINPID"
    ]
    argv = s["ExecReload"][0].replace("$MAINPID", "4242").split()[1:]
    args = cli._parser().parse_args(argv)
    assert (args.command, args.pid, args.timeout) == ("reload", 4242, cli.RELOAD_TIMEOUT)
    # the reload gives up (with its reason) before systemd's timeout for ExecReload= kills it
    assert int(s["TimeoutStartSec"][0]) > cli.RELOAD_TIMEOUT
    assert s["ExecStart"] == [
        "/opt/provhad/venv/bin/provhad run --config /etc/provhad/provhad.toml"
    ]
    assert s["User"] == ["provhad"] and s["StateDirectory"] == ["provhad"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    # directories only: renaming onto a single bind-mounted file fails
    writable = " ".join(s["ReadWritePaths"]).split()
    assert writable == [
        "/etc/dhcp-nmsprime",
        "/etc/named-nmsprime.d",
        "/etc/chrony-nmsprime.d",
        "-/etc/kea",  # DHCPv6 (off by default): "-", so a host without Kea still starts
    ]
    example = (REPO / "systemd/provhad.toml").read_text()
    for key, path in (
        ("dhcp_dir", "/etc/dhcp-nmsprime"),
        ("named_key", "/etc/named-nmsprime.d/dhcpupdate.key"),
        ("named_ddns_script", "/etc/dhcp-nmsprime/named-ddns.sh"),
        ("chrony_conf", "/etc/chrony-nmsprime.d/nmsprime.conf"),
    ):
        assert re.search(rf'^{key} = "{re.escape(path)}"', example, re.M), key
        assert os.path.dirname(path) in writable or path in writable


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed (Debian package systemd)",
)
def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("named:x:25:\n")
    proc = run("systemd-sysusers", f"--root={root}", SYSTEMD / "provhad.sysusers.conf")
    assert proc.returncode == 0, proc.stderr
    passwd, groups = (
        {ln.split(":")[0]: ln.split(":") for ln in (root / "etc" / db).read_text().splitlines()}
        for db in ("passwd", "group")
    )
    assert passwd["provhad"][5:] == ["/var/lib/provhad", "/sbin/nologin"]
    assert "provhad" in groups["dhcpd"][3].split(",")
    uid, gid = int(passwd["provhad"][2]), int(groups["provhad"][2])
    proc = run("systemd-tmpfiles", f"--root={root}", "--create", SYSTEMD / "provhad.tmpfiles.conf")
    assert proc.returncode == 0, proc.stderr

    def owner(path: str) -> tuple[int, int, int]:
        st = (root / path.lstrip("/")).lstat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    dhcpd, named = int(groups["dhcpd"][2]), int(groups["named"][2])
    assert owner("/etc/dhcp-nmsprime") == (uid, dhcpd, 0o2750)
    assert owner("/etc/dhcp-nmsprime/cmts_gws") == (uid, dhcpd, 0o2750)
    assert owner("/etc/named-nmsprime.d") == (uid, named, 0o2750)
    assert owner("/etc/chrony-nmsprime.d") == (uid, gid, 0o755)
    assert owner("/etc/provhad") == (0, gid, 0o750)
    assert owner("/var/lib/provhad") == (uid, gid, 0o750)
    link = root / "etc/chrony.d/nmsprime.conf"
    assert os.readlink(link) == "/etc/chrony-nmsprime.d/nmsprime.conf"


# --- the polkit rule, executed ----------------------------------------------------------------

_POLKIT_HARNESS = r"""
const fs = require("fs");
const rules = [];
const polkit = {
  Result: {YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null},
  addRule: (f) => rules.push(f),
  log: () => {},
};
new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const out = cases.map(([id, user, unit, verb]) => {
  const action = {id, lookup: (k) => ({unit, verb})[k]};
  const subject = {user, groups: [user], local: false, active: false};
  for (const rule of rules) {
    const r = rule(action, subject);
    if (r !== null && r !== undefined) return r;
  }
  return null;
});
process.stdout.write(JSON.stringify({rules: rules.length, results: out}));
"""

MANAGE = "org.freedesktop.systemd1.manage-units"
ALLOWED = {
    ("dhcpd.service", "restart"),
    ("dhcpd.service", "try-restart"),
    ("named.service", "reload-or-restart"),
    ("named.service", "try-restart"),
    ("chrony.service", "reload-or-restart"),
    ("chrony.service", "try-restart"),
    ("chronyd.service", "reload-or-restart"),
    ("chronyd.service", "try-restart"),
}
UNITS = ["dhcpd.service", "named.service", "chrony.service", "chronyd.service",
         "sshd.service", "provhad.service", "dhcpd6.service", "named.service.d", "",
         "hasOwnProperty", "__proto__", "constructor"]  # fmt: skip
VERBS = ["start", "stop", "restart", "try-restart", "reload", "reload-or-restart",
         "reload-or-try-restart", "try-reload", "reload-or-start", "", "indexOf"]  # fmt: skip


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Debian package nodejs) is absent")
def test_polkit_rule_allows_exactly_the_default_commands(tmp_path: Path) -> None:
    harness = tmp_path / "harness.js"
    harness.write_text(_POLKIT_HARNESS)
    cases = [
        [action, user, unit, verb]
        for action in (MANAGE, "org.freedesktop.systemd1.manage-unit-files")
        for user in ("provhad", "root", "apache", "provhad2")
        for unit in UNITS
        for verb in VERBS
    ]
    proc = subprocess.run(
        ["node", harness, SYSTEMD / "50-provhad.rules"],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rules"] == 1
    granted = {tuple(c) for c, r in zip(cases, out["results"], strict=True) if r == "yes"}
    assert granted == {(MANAGE, "provhad", unit, verb) for unit, verb in ALLOWED}
    # everything else is left to other rules and the defaults (never a NO that could shadow them)
    assert set(out["results"]) == {"yes", None}


def test_polkit_rule_matches_the_default_commands() -> None:
    """The verbs systemd hands to polkit for the default [dhcpd]/[services] commands."""
    from provhad.config import DhcpdConfig, ServicesConfig

    commands = [
        DhcpdConfig().restart_command,
        ServicesConfig().named_reload_command,
        ServicesConfig().chrony_reload_command,
    ]
    for argv in commands:
        assert argv[0] == "systemctl" and len(argv) == 3
        assert (argv[2], argv[1]) in ALLOWED, argv


# --- provhad reload (ExecReload=): returns once the daemon has reloaded -------------------------

# Stands in for `provhad run` (its argv names provhad): writes the state file's reload stamps
# as the daemon does (CLOCK_MONOTONIC µs, started when it takes the SIGHUP, finished after the
# cycle) and finishes, refuses or dies only when the test says so on its stdin.
_DAEMON = r"""
import json, os, signal, sys, time
state = sys.argv[1] + "/state.json"
def save(**data):
    data = dict({"pid": os.getpid(), "status": "live gen 1"}, **data)
    with open(state + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(state + ".tmp", state)
stamps = {"reload_started_usec": 1, "reload_finished_usec": 2, "reload_error": ""}
save(**(stamps if sys.argv[2] == "new" else {}))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGHUP})
    stamps["reload_started_usec"] = time.monotonic_ns() // 1000
    save(**stamps)
    print("reloading", flush=True)
    what = sys.stdin.readline().strip()
    if what == "die":
        sys.exit(0)
    stamps["reload_error"] = "config.toml: [check] db_down: bad" if what == "refuse" else ""
    stamps["reload_finished_usec"] = time.monotonic_ns() // 1000
    save(**stamps)
"""


class StandIn:
    def __init__(self, tmp: Path, kind: str = "new") -> None:
        self.root = tmp / "root"
        self.state_dir = self.root / "var/lib/provhad"
        self.state_dir.mkdir(parents=True)
        self.config = tmp / "provhad.toml"
        self.config.write_text(
            '[database]\nhosts = ["127.0.0.1:3306"]\n[provha]\nown_state = "slave"\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DAEMON, str(self.state_dir), kind, "provhad", "run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.said() == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def said(self) -> str:
        """Its next line (a test that waits for one in vain fails instead of hanging)."""
        return self.lines.get(timeout=60)

    def tell(self, what: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def reload(self, *args: str) -> subprocess.Popen[str]:
        argv = ["reload", "--config", self.config, "--root", self.root, *args]
        return subprocess.Popen(
            [VENV_PROVHAD, *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    daemon = StandIn(tmp_path)
    yield daemon
    daemon.close()


def _ended(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_reload_returns_once_the_daemon_has_reloaded(stand_in: StandIn) -> None:
    for round_ in range(2):  # the second must not take the first's stamps for its own
        proc = stand_in.reload()
        assert stand_in.said() == "reloading"
        assert proc.poll() is None, f"round {round_}: returned before the reload finished"
        stand_in.tell("finish")
        assert _ended(proc) == (0, "reloaded: live gen 1\n", "")


def test_reload_with_the_pid_systemd_passes(stand_in: StandIn) -> None:
    proc = stand_in.reload("--pid", str(stand_in.proc.pid))
    assert stand_in.said() == "reloading"
    stand_in.tell("finish")
    assert _ended(proc)[0] == 0


def test_a_refused_reload_fails(stand_in: StandIn) -> None:
    proc = stand_in.reload()
    assert stand_in.said() == "reloading"
    stand_in.tell("refuse")
    code, _, err = _ended(proc)
    assert code == 1
    assert err == (
        "provhad: reload refused, the old configuration stays: config.toml: [check] db_down: bad\n"
    )


def test_a_daemon_that_dies_during_the_reload_fails_it(stand_in: StandIn) -> None:
    proc = stand_in.reload()
    assert stand_in.said() == "reloading"
    stand_in.tell("die")
    stand_in.proc.wait(timeout=30)
    code, _, err = _ended(proc)
    assert code == 1 and err.endswith("ended during the reload\n")


def test_a_reload_that_takes_too_long_fails(stand_in: StandIn) -> None:
    proc = stand_in.reload("--timeout", "1")
    assert stand_in.said() == "reloading"
    code, _, err = _ended(proc)
    assert code == 1 and "has not finished the reload within 1 s" in err
    stand_in.tell("finish")


def test_reload_without_a_daemon(tmp_path: Path) -> None:
    daemon = StandIn(tmp_path)
    daemon.close()  # killed: the state file names a pid that is gone
    code, _, err = _ended(daemon.reload())
    assert code == 1 and f"the daemon is not running: pid {daemon.proc.pid} is gone" in err
    (daemon.state_dir / "state.json").unlink()
    code, _, err = _ended(daemon.reload())
    assert code == 1 and "is the daemon running?" in err


def test_reload_of_a_daemon_without_reload_stamps_just_signals(tmp_path: Path) -> None:
    daemon = StandIn(tmp_path, "old")
    try:
        code, out, _ = _ended(daemon.reload())
        assert code == 0 and "does not report when it has reloaded" in out
        assert daemon.said() == "reloading"  # it got the SIGHUP
    finally:
        daemon.close()
