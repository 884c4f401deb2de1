"""`provhad check` and `provhad status`: state files written by the daemon's own State.save,
real live and dead pids, and a stand-in `systemctl show` (this machine runs no systemd; the
real-systemd container test asks the real one)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad import check, cli, services
from provhad.config import CheckConfig
from provhad.services import UnitState
from provhad.state import State
from tests.test_cli_render import provhad

LINE = re.compile(
    r"^PROVHAD (?P<status>OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>[^|\n]+?)"
    r"(?: \| (?P<perf>[^|\n]+))?\n$"
)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    """A child that has started running (it says so), and then waits on its stdin."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


_WAIT = "import sys; print('ready', flush=True); sys.stdin.read()"


@pytest.fixture(scope="module")
def daemon_pid() -> Iterator[int]:
    """A live process whose command line looks like the daemon's (.../bin/provhad run)."""
    proc = _start([sys.executable, "-c", _WAIT, "/opt/provhad/venv/bin/provhad", "run"])
    yield proc.pid
    _end(proc)


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A live process that is not provhad."""
    proc = _start([sys.executable, "-c", _WAIT])
    yield proc.pid
    _end(proc)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=30)
    return proc.pid


_SYSTEMCTL = """#!{python}
# `systemctl show --property=... -- UNIT...` as systemd answers it, from $FAKE_SYSTEMD (JSON:
# unit -> [ActiveState, SubState, seconds since it became active]); other units: not-found.
import json, os, sys, time
with open(os.environ["FAKE_SYSTEMD"] + ".calls", "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
setup = json.load(open(os.environ["FAKE_SYSTEMD"]))
if setup.get("hang"):
    time.sleep(3600)
if setup.get("fail"):
    sys.exit(setup["fail"])
assert sys.argv[1:3] == ["show", "--property=LoadState,ActiveState,SubState,"
                         "ActiveEnterTimestampMonotonic"] and sys.argv[3] == "--", sys.argv
now = time.monotonic_ns() // 1000
blocks = []
for unit in sys.argv[4:]:
    active, sub, age = setup["units"].get(unit, ["inactive", "dead", None])
    load = "loaded" if unit in setup["units"] else "not-found"
    entered = 0 if age is None else now - int(age * 1e6)
    blocks.append(f"ActiveState={{active}}\\nSubState={{sub}}\\n"
                  f"ActiveEnterTimestampMonotonic={{entered}}\\nLoadState={{load}}\\n")
print("\\n".join(blocks), end="")
"""


class FakeSystemd:
    """What the stand-in systemctl answers, and what it was asked."""

    DAY = 86400.0

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "fake-systemd.json"
        self.setup: dict[str, object] = {
            "units": {
                u: ["active", "running", self.DAY]
                for u in ("dhcpd.service", "named.service", "chrony.service")
            }
        }
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.setup))

    def unit(self, name: str, active: str, sub: str, age: float | None = DAY) -> None:
        units = self.setup["units"]
        assert isinstance(units, dict)
        units[name] = [active, sub, age]
        self.save()

    def calls(self) -> list[str]:
        calls = self.path.with_name(self.path.name + ".calls")
        return calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture(autouse=True)
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemd:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(_SYSTEMCTL.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    fake = FakeSystemd(tmp_path)
    monkeypatch.setenv("FAKE_SYSTEMD", str(fake.path))
    return fake


def ago(seconds: float) -> str:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return at.isoformat(timespec="seconds")


def healthy(pid: int, **changes: object) -> State:
    """The state of a daemon that published generation 7 a minute ago, nothing wrong."""
    state = State(
        pid=pid,
        node="slave1",
        started_at=ago(3600),
        status="live gen 7, ...",
        last_cycle_at=ago(60),
        last_cycle_ok=True,
        last_success_at=ago(60),
        last_trigger="poll",
        generation=7,
        db_ok=True,
        db_node="127.0.0.1:3306",
        counts={"modems": 100, "mtas": 20, "endpoints": 3, "pools": 4},
        dhcpd_applied_set="a7",
        dhcpd_running_set="a7",
        dhcpd_running_generation=7,
    )
    for key, value in changes.items():
        setattr(state, key, value)
    return state


class Site:
    """A config file and a root whose state directory the daemon's State.save writes into."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.root = tmp / "root"
        self.state_dir = self.root / "var/lib/provhad"
        self.config = tmp / "provhad.toml"
        self.config.write_text(
            '[database]\nhosts = ["127.0.0.1:3306", "172.20.0.1:3306"]\n'
            '[provha]\nown_state = "slave"\n' + extra
        )

    def save(self, state: State) -> None:
        state.save(self.state_dir)

    def check(
        self, capsys: pytest.CaptureFixture[str], *args: str
    ) -> tuple[int, str, str, dict[str, str]]:
        """Run `provhad check` in-process: exit status, status word, text, perfdata by label."""
        code = cli.main(["check", "--config", str(self.config), "--root", str(self.root), *args])
        out = capsys.readouterr().out
        m = LINE.match(out)
        assert m, f"not one plugin status line: {out!r}"
        perf = dict(item.split("=", 1) for item in (m["perf"] or "").split())
        assert code == ("OK", "WARNING", "CRITICAL", "UNKNOWN").index(m["status"])
        return code, m["status"], m["text"], perf


def test_ok_with_perfdata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid))
    code, status, text, perf = site.check(capsys)
    assert (code, status) == (0, "OK")
    assert text.startswith("live gen 7, 123 hosts, last success ")
    assert re.fullmatch(r"6\ds;7200;14400;0", perf["age"]), perf["age"]
    assert perf["hosts"] == "123;;;0"
    assert perf["rejected"] == "0;0;;0"  # alerts at 1 or more = a range of "more than 0"
    assert perf["missing_configfiles"] == "0;0;;0"
    assert perf["generation"] == "7;;;0"


def test_no_state_file_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    code, _, text, perf = site.check(capsys)
    assert code == 3 and "no state file" in text and "never run" in text and not perf


def test_garbage_state_file_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    site.state_dir.mkdir(parents=True)
    (site.state_dir / "state.json").write_text('{"pid": 1, "status": "starting"')
    code, _, text, _ = site.check(capsys)
    assert code == 3 and "cannot read" in text


def test_configuration_error_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path, '[check]\ndb_down = "fatal"\n')
    code, _, text, _ = site.check(capsys)
    assert code == 3
    assert "configuration error" in text and "check.db_down: 'fatal' is not one of" in text


def test_usage_error_is_unknown() -> None:
    proc = provhad("check", "-w", "soon")
    assert proc.returncode == 3
    assert proc.stdout.startswith("PROVHAD UNKNOWN - usage: argument -w/--warning: 'soon'")


def test_stopped_daemon_is_critical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid, status="stopped"))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and text.startswith("daemon not running: stopped")


def test_dead_pid_is_critical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dead_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(dead_pid))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and f"pid {dead_pid} is gone" in text


def test_reused_pid_is_critical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], other_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(other_pid))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and f"pid {other_pid} is not provhad" in text


def test_age_thresholds_from_config_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path, "[check]\nage_warning = 600\nage_critical = 1200\n")
    site.save(healthy(daemon_pid, last_success_at=ago(900)))
    code, _, text, perf = site.check(capsys)
    assert code == 1 and re.fullmatch(r"last success 9\d\d s ago", text)
    assert perf["age"].endswith("s;600;1200;0")
    assert site.check(capsys, "-c", "800")[0] == 2
    assert site.check(capsys, "-w", "1000", "--critical", "2000")[0] == 0


def test_never_succeeded_counts_from_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid, last_success_at="", generation=None, started_at=ago(30)))
    code, _, text, perf = site.check(capsys)
    assert code == 0 and "no successful cycle in " in text and text.startswith("no live set")
    assert perf["age"].startswith("U;") and perf["generation"] == "U;;;0"
    site.save(healthy(daemon_pid, last_success_at="", started_at=ago(20000)))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and "no successful cycle in 20" in text


def test_dhcpd_restart_pending_and_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid, dhcpd_applied_set="a8", generation=8))
    code, _, text, _ = site.check(capsys)
    assert code == 1 and text == "dhcpd restart pending (live gen 8, dhcpd runs gen 7)"
    site.save(
        healthy(
            daemon_pid,
            dhcpd_applied_set="a8",
            dhcpd_last_restart_ok=False,
            dhcpd_error="exit 1: Job for dhcpd.service failed",
        )
    )
    code, _, text, _ = site.check(capsys)
    assert code == 2 and text == "dhcpd restart FAILED: exit 1: Job for dhcpd.service failed"


def test_database_down_and_degraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    down = healthy(daemon_pid, db_ok=False, db_error="no healthy database node | x\nmore")
    site.save(down)
    code, _, text, _ = site.check(capsys)
    # the '|' would start the perfdata, a newline would end the status line
    assert code == 2 and text == "database DOWN: no healthy database node / x more"
    site.save(healthy(daemon_pid, db_node="172.20.0.1:3306"))
    code, _, text, _ = site.check(capsys)
    assert code == 1
    assert text == "database degraded: reading from 172.20.0.1:3306, not 127.0.0.1:3306"

    relaxed = Site(tmp_path, '[check]\ndb_down = "warning"\ndb_fallback = "ok"\n')
    relaxed.save(down)
    assert relaxed.check(capsys)[0] == 1
    relaxed.save(healthy(daemon_pid, db_node="172.20.0.1:3306"))
    assert relaxed.check(capsys)[0] == 0


def test_rejected_rows_and_missing_configfiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    rejected = [f"modem {n}: mac: 'zz' is not a MAC address" for n in (1, 2, 3)]
    site.save(healthy(daemon_pid, rejected=rejected, missing_configfiles=2))
    code, _, text, perf = site.check(capsys)
    assert code == 1 and text == "3 rejected rows; 2 TFTP configfiles missing"
    assert perf["rejected"] == "3;0;;0" and perf["missing_configfiles"] == "2;0;;0"
    code, _, text, perf = site.check(capsys, "--rejected-critical", "3", "--missing-warning", "0")
    assert code == 2 and text == "3 rejected rows" and perf["rejected"] == "3;0;2;0"
    off = Site(tmp_path, "[check]\nrejected_warning = 0\nmissing_configfiles_warning = 5\n")
    off.save(healthy(daemon_pid, rejected=rejected, missing_configfiles=2))
    assert off.check(capsys)[0] == 0


def test_held_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int) -> None:
    site = Site(tmp_path)
    shrink = "shrink guard: hosts would drop from 123 to 0 (-100%, more than 10%)"
    site.save(healthy(daemon_pid, held_reason=shrink, last_cycle_ok=False, last_error=shrink))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and text == f"HELD: {shrink} (provhad confirm-shrink)"
    dhcpd = "dhcpd -t: /etc/dhcp-nmsprime/global.conf line 3: semicolon expected."
    site.save(healthy(daemon_pid, held_reason=dhcpd, last_cycle_ok=False, last_error=dhcpd))
    code, _, text, _ = site.check(capsys)
    assert code == 1 and text == f"held back: {dhcpd}"
    site.save(healthy(daemon_pid, last_cycle_ok=False, last_error="staging failed: No space"))
    code, _, text, _ = site.check(capsys)
    assert code == 1 and text == "last cycle failed: staging failed: No space"


def test_the_worst_problem_comes_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dead_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(dead_pid, rejected=["modem 1: bad"], dhcpd_applied_set="a8", generation=8))
    code, _, text, _ = site.check(capsys)
    assert code == 2
    assert text == (
        f"daemon not running: pid {dead_pid} is gone; dhcpd restart pending "
        "(live gen 8, dhcpd runs gen 7); 1 rejected rows"
    )


def test_evaluate_is_pure() -> None:
    """The verdict depends only on its arguments (no clock, no /proc)."""
    now = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)
    state = healthy(1, last_success_at="2026-03-29T00:59:00+00:00")
    limits = CheckConfig()
    first = check.evaluate(state, limits, now, None, "127.0.0.1:3306")
    assert first == check.evaluate(state, limits, now, None, "127.0.0.1:3306")
    assert first.line() == (
        "PROVHAD OK - live gen 7, 123 hosts, last success 60 s ago, db 127.0.0.1:3306"
        " | age=60s;7200;14400;0 hosts=123;;;0 rejected=0;0;;0 missing_configfiles=0;0;;0"
        " generation=7;;;0 omapi_hosts=0c;;;0"
    )


def test_the_omapi_path_shows_in_the_ok_text_and_perfdata() -> None:
    """Issue 12: on or off (and why), the steps sent live, and a last update that fell back."""
    now = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)
    state = healthy(1, last_success_at="2026-03-29T00:59:00+00:00")
    state.omapi, state.omapi_hosts = "on", 42
    state.omapi_last = "2026-03-29T00:58:00+00:00 -1 +2"
    line = check.evaluate(state, CheckConfig(), now).line()
    assert ", omapi on |" in line and "omapi_hosts=42c;;;0" in line
    state.omapi_fallback = "2026-03-29T00:59:30+00:00 OMAPI: cm-1: add: can't update object"
    line = check.evaluate(state, CheckConfig(), now).line()
    assert "omapi on (last update fell back: OMAPI: cm-1: add: can't update object)" in line
    state.omapi_last = "2026-03-29T00:59:40+00:00 -0 +1"  # a later update went live again
    assert "fell back" not in check.evaluate(state, CheckConfig(), now).line()
    state.omapi = "off (no OMAPI key in failover.conf)"
    assert (
        "omapi off (no OMAPI key in failover.conf)"
        in check.evaluate(state, CheckConfig(), now).line()
    )


@pytest.mark.parametrize(
    ("arg", "is_provhad"),
    [
        (b"/opt/provhad/venv/bin/provhad", True),  # the console script, as the interpreter's arg
        (b"provhad", True),
        (b"provhad.cli", True),  # python -m provhad.cli
        (b"/opt/provhad/venv/bin/python3", False),
        (b"/home/x/provhad-checkout/bin/cat", False),
        (b"provhadx", False),
    ],
)
def test_which_argv_names_provhad(arg: bytes, is_provhad: bool) -> None:
    assert check._names_provhad(arg) is is_provhad


# --- the services provhad feeds (issue 13 item 4) ---------------------------------------------


def test_the_default_units_are_asked_in_one_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid))
    assert site.check(capsys)[:2] == (0, "OK")
    assert systemd.calls() == [
        "show --property=LoadState,ActiveState,SubState,ActiveEnterTimestampMonotonic -- "
        "dhcpd.service named.service chrony.service"
    ]


def test_dhcpd_down_is_critical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    """The report that started item 4: dhcpd failed at boot, provhad itself fine."""
    site = Site(tmp_path)
    site.save(healthy(daemon_pid))
    systemd.unit("dhcpd.service", "failed", "failed", None)
    code, _, text, _ = site.check(capsys)
    assert (code, text) == (2, "dhcpd DOWN: dhcpd.service failed")
    systemd.unit("dhcpd.service", "activating", "auto-restart", None)
    assert site.check(capsys)[:3] == (2, "CRITICAL", "dhcpd DOWN: dhcpd.service activating "
                                      "(auto-restart)")  # fmt: skip
    systemd.unit("dhcpd.service", "reloading", "reload", 5)
    assert site.check(capsys)[0] == 0


def test_a_missing_dhcpd_unit_is_critical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    """E.g. Debian's isc-dhcp-server.service configured, dhcpd.service checked."""
    site = Site(
        tmp_path, '[dhcpd]\nrestart_command = ["systemctl", "restart", "isc-dhcp-server"]\n'
    )
    site.save(healthy(daemon_pid))
    code, _, text, _ = site.check(capsys)
    assert (code, text) == (2, "dhcpd DOWN: isc-dhcp-server not-found")


def test_other_units_down_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(tmp_path, '[check]\nunits = ["auto", "tftp.socket"]\n')
    site.save(healthy(daemon_pid))
    systemd.unit("named.service", "inactive", "dead", None)
    systemd.unit("tftp.socket", "failed", "failed", None)
    code, _, text, _ = site.check(capsys)
    assert code == 1
    assert text == ("named.service inactive (dead), not active; tftp.socket failed, not active")
    systemd.unit("tftp.socket", "active", "listening", 100)
    systemd.unit("named.service", "active", "running", 100)
    assert site.check(capsys)[0] == 0


def test_units_are_configurable_and_can_be_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(
        tmp_path,
        '[services]\nchrony_reload_command = ["systemctl", "try-restart", "chronyd.service"]\n'
        '[check]\ndhcpd_unit = "dhcpd6.service"\nunits = ["auto", "chronyd.service", ""]\n',
    )
    site.save(healthy(daemon_pid))
    systemd.unit("dhcpd6.service", "active", "running")
    systemd.unit("chronyd.service", "active", "running")
    assert site.check(capsys)[0] == 0
    assert systemd.calls()[-1].endswith("-- dhcpd6.service named.service chronyd.service")
    off = Site(tmp_path, '[check]\ndhcpd_unit = ""\nunits = []\n')
    off.save(healthy(daemon_pid))
    systemd.setup["fail"] = 1  # asking now would be a problem
    systemd.save()
    assert off.check(capsys)[0] == 0
    assert len(systemd.calls()) == 1


def test_units_of_commands_that_are_not_systemctl_are_not_guessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(
        tmp_path,
        '[dhcpd]\nrestart_command = ["/usr/local/bin/restart-dhcpd"]\n'
        '[services]\nnamed_reload_command = ["rndc", "reload"]\nchrony_reload_command = []\n',
    )
    site.save(healthy(daemon_pid))
    assert site.check(capsys)[0] == 0
    assert systemd.calls() == []
    assert services.unit_of(["systemctl", "--no-block", "restart", "x.service"]) == "x.service"
    assert services.unit_of(["/bin/systemctl", "restart", "--quiet"]) is None
    assert services.unit_of(["systemctl", "daemon-reload"]) is None


@pytest.mark.skipif(os.path.exists("/run/systemd/system"), reason="this host runs systemd")
def test_without_systemd_the_units_are_a_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    daemon_pid: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real systemctl on a host whose PID 1 is no systemd (like this one)."""
    monkeypatch.setenv("PATH", os.defpath)
    site = Site(tmp_path)
    site.save(healthy(daemon_pid))
    code, _, text, _ = site.check(capsys)
    assert code == 1
    assert text.startswith(
        "cannot ask systemd about dhcpd.service, named.service, chrony.service: "
        "systemctl show: exit 1: System has not been booted with systemd"
    )


def test_a_hanging_systemctl_is_killed_in_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid))
    systemd.setup["hang"] = True
    systemd.save()
    started = time.monotonic()
    code, _, text, _ = site.check(capsys)
    took = time.monotonic() - started
    assert check.SYSTEMCTL_TIMEOUT <= took < check.SYSTEMCTL_TIMEOUT + 3
    assert code == 1 and text.endswith("systemctl show: timed out (killed with its process group)")


def _restarted(pid: int, at_ago: float, took: float) -> State:
    return healthy(pid, dhcpd_last_restart_at=ago(at_ago), dhcpd_restart_s=took)


def test_dhcpd_up_since_before_our_restart_may_run_an_old_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(tmp_path)
    # restarted 100 s ago (taking 3 s): dhcpd came up 102 s ago, within that restart
    site.save(_restarted(daemon_pid, 100, 3.0))
    systemd.unit("dhcpd.service", "active", "running", 102)
    assert site.check(capsys)[0] == 0
    # restarted later by someone else: it reads the live files too
    systemd.unit("dhcpd.service", "active", "running", 10)
    assert site.check(capsys)[0] == 0
    # up for an hour: provhad's restart never reached it
    systemd.unit("dhcpd.service", "active", "running", 3600)
    code, _, text, _ = site.check(capsys)
    assert code == 1
    assert re.fullmatch(
        r"dhcpd\.service active since \S+, before provhad restarted it at \S+: it may not run "
        r"live gen 7",
        text,
    ), text
    # no restart of ours recorded, or the last one failed (reported as such): nothing to compare
    site.save(healthy(daemon_pid))
    assert site.check(capsys)[0] == 0


def test_parse_show_as_systemd_prints_it() -> None:
    text = (
        "ActiveState=active\nSubState=running\nActiveEnterTimestampMonotonic=1000000\n"
        "LoadState=loaded\n\n"
        "ActiveState=inactive\nSubState=dead\nActiveEnterTimestampMonotonic=0\n"
        "LoadState=not-found\n"
    )
    assert services.parse_show(["a.service", "b.service"], text, 31_000_000) == [
        UnitState("a.service", "loaded", "active", "running", 30.0),
        UnitState("b.service", "not-found", "inactive", "dead", None),
    ]
    with pytest.raises(services.SystemdError, match="1 blocks for 2 units"):
        services.parse_show(["a.service", "b.service"], text.split("\n\n")[0], 0)


def test_failed_reloads_are_warnings() -> None:
    """state.reload_errors (service -> why its last reload failed) once the daemon writes it;
    a state file without it has none."""
    now = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)
    state = healthy(1, last_success_at="2026-03-29T00:59:00+00:00")
    limits = CheckConfig()
    assert check.evaluate(state, limits, now).code == 0
    setattr(state, "reload_errors", {"named": "exit 1: rndc: connection refused"})  # noqa: B010
    verdict = check.evaluate(state, limits, now)
    assert (verdict.code, verdict.text) == (
        1,
        "named reload FAILED: exit 1: rndc: connection refused",
    )


def test_long_texts_are_summarised_at_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    error = "exit 1: Job for dhcpd.service failed because the control process exited " * 4
    site.save(healthy(daemon_pid, dhcpd_last_restart_ok=False, dhcpd_error=error))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and text.endswith("...") and len(text) <= 160
    assert (text[:-3] + " ") in ("dhcpd restart FAILED: " + error)  # whole words only


def test_the_confirm_hint_is_not_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    held = (
        "shrink guard: hosts would drop from 123 to 0; held back until confirmed with "
        "`provhad confirm-shrink`"
    )
    site.save(healthy(daemon_pid, held_reason=held, last_cycle_ok=False, last_error=held))
    code, _, text, _ = site.check(capsys)
    assert code == 2 and text == f"HELD: {held}" and text.count("confirm-shrink") == 1


# --- provhad status: LSB-style exit codes (issue 13 item 5) -----------------------------------


def _status(site: Site, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["status", "--config", str(site.config), "--root", str(site.root), *args])
    return code, capsys.readouterr().out


def test_status_running_and_healthy_is_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int
) -> None:
    site = Site(tmp_path)
    state = healthy(daemon_pid)
    state.omapi, state.omapi_hosts = "on", 3
    state.omapi_last = "2026-03-29T00:58:00+00:00 -1 +2"
    site.save(state)
    code, out = _status(site, capsys)
    assert code == check.STATUS_OK == 0
    assert f"daemon:              running (pid {daemon_pid})\n" in out
    assert (
        "omapi:               on; 3 host steps live since start; "
        "last 2026-03-29T00:58:00+00:00 -1 +2; last fallback -\n"
    ) in out
    assert re.search(r"^health: +OK - live gen 7, 123 hosts, ", out, re.M), out
    code, out = _status(site, capsys, "--json")
    assert code == 0 and json.loads(out)["generation"] == 7


def test_status_running_with_problems_is_150(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_pid: int, systemd: FakeSystemd
) -> None:
    site = Site(tmp_path)
    site.save(healthy(daemon_pid, rejected=["modem 1: bad"]))
    code, out = _status(site, capsys)
    assert code == check.STATUS_PROBLEMS == 150
    assert re.search(r"^health: +WARNING - 1 rejected rows$", out, re.M), out
    site.save(healthy(daemon_pid))
    systemd.unit("dhcpd.service", "failed", "failed", None)
    code, out = _status(site, capsys)
    assert code == 150 and "CRITICAL - dhcpd DOWN: dhcpd.service failed" in out
    assert _status(site, capsys, "--json")[0] == 150


def test_status_stopped_is_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dead_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(dead_pid, status="stopped"))
    code, out = _status(site, capsys)
    assert code == check.STATUS_STOPPED == 3
    assert "daemon:              not running: stopped (state file says so)" in out
    assert _status(site, capsys, "--json")[0] == 3


def test_status_dead_while_the_state_file_says_running_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dead_pid: int, other_pid: int
) -> None:
    site = Site(tmp_path)
    site.save(healthy(dead_pid))
    code, out = _status(site, capsys)
    assert code == check.STATUS_DEAD == 1
    assert f"not running: pid {dead_pid} is gone" in out
    site.save(healthy(other_pid))  # the pid was reused after a crash
    assert _status(site, capsys)[0] == 1


def test_status_without_state_file_is_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    assert _status(site, capsys)[0] == check.STATUS_UNKNOWN == 4
    assert _status(site, capsys, "--json")[0] == 4
    site.state_dir.mkdir(parents=True)
    (site.state_dir / "state.json").write_text("{")
    assert _status(site, capsys)[0] == 4


def test_dhcpv6_without_failover_is_said_in_the_ok_text() -> None:
    """Issue 11 item 7: upstream has no v6 failover; an operator reading OK must know."""
    import dataclasses

    from provhad import check
    from provhad.config import Config

    cfg = Config()
    assert check.notes(cfg) == ()
    on = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, dhcpv6=True))
    assert check.notes(on) == (check.V6_NOTE,)
    state = healthy(os.getpid())
    now = dt.datetime.now(dt.UTC)
    verdict = check.evaluate(state, cfg.check, now, None, "", check.Units(), check.notes(on))
    assert verdict.code == check.OK and verdict.text.endswith(check.V6_NOTE)
