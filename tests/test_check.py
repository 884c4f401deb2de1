"""`provhad check`: state files written by the daemon's own State.save, real live and dead pids."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad import check, cli
from provhad.config import CheckConfig
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
        " generation=7;;;0"
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
