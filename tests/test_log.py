"""structlog output: journal entries (through systemd-python; once against a real journald),
console and plain lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import systemd.journal

from provhad import config, log, mqtt

FILE = "/etc/dhcp-nmsprime/modems-host.conf"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    log.configure(target="plain", stream=io.StringIO())
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, log._SinkHandler):
            root.removeHandler(handler)


Entries = list[dict[str, str]]


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Entries:
    """What provhad hands to systemd-python's sendv, one dict per entry (every field once).
    The real journald gets the same calls in test_a_real_journald_stores_the_fields."""
    entries: Entries = []

    def sendv(*lines: str) -> None:
        fields = [line.partition("=")[::2] for line in lines]
        entries.append(dict(fields))
        assert len(entries[-1]) == len(fields), fields

    monkeypatch.setattr(systemd.journal, "sendv", sendv)
    return entries


def here() -> int:
    """Line number of the caller."""
    return sys._getframe(1).f_lineno


# --- journal ------------------------------------------------------------------------------


def test_journal_entry_has_one_field_per_key(journal: Entries) -> None:
    log.configure(target="journal")
    logger = log.get()
    line = here() + 1
    logger.info(
        "published", trigger="poll", generation=42, duration_ms=12.5, files=[FILE], rejected=3
    )
    assert journal == [
        {
            "MESSAGE": (
                "published duration_ms=12.5 "
                f'files="[\\"{FILE}\\"]" generation=42 rejected=3 trigger=poll'
            ),
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": "provhad",
            "CODE_FILE": __file__,
            "CODE_LINE": str(line),
            "CODE_FUNC": "test_journal_entry_has_one_field_per_key",
            "PROVHAD_EVENT": "published",
            "PROVHAD_LOGGER": "provhad",
            "PROVHAD_TRIGGER": "poll",
            "PROVHAD_GENERATION": "42",
            "PROVHAD_DURATION_MS": "12.5",
            "PROVHAD_FILES": FILE,
            "PROVHAD_REJECTED": "3",
        }
    ]


def test_multiline_values(journal: Entries) -> None:
    log.configure(target="journal")
    other = "/etc/dhcp-nmsprime/cmts_gws/1.conf"
    log.get("provhad.publish").warning(
        "dhcpd rejected", files=[FILE, other], stderr="line 1\nline 2", ok=False, extra=None
    )
    (fields,) = journal
    assert fields["PROVHAD_STDERR"] == "line 1\nline 2"
    assert fields["PROVHAD_FILES"] == f"{FILE}\n{other}"
    assert fields["PROVHAD_OK"] == "false"
    assert fields["PROVHAD_EXTRA"] == "null"
    assert fields["PROVHAD_LOGGER"] == "provhad.publish"
    assert fields["PRIORITY"] == "4"
    # MESSAGE stays one line: logfmt escapes the newline.
    assert fields["MESSAGE"] == (
        f'dhcpd rejected extra=null files="[\\"{FILE}\\", \\"{other}\\"]" ok=false '
        'stderr="line 1\\nline 2"'
    )


def test_priorities_and_traceback(journal: Entries) -> None:
    log.configure(target="journal", level="debug")
    logger = log.get()
    for method, priority in [
        (logger.debug, "7"),
        (logger.info, "6"),
        (logger.warning, "4"),
        (logger.error, "3"),
        (logger.critical, "2"),
    ]:
        method("step")
        assert journal.pop()["PRIORITY"] == priority
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("cycle failed", phase="render")
    (fields,) = journal
    assert fields["PRIORITY"] == "3"
    first, *rest = fields["MESSAGE"].split("\n")
    assert first == "cycle failed phase=render"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ZeroDivisionError: division by zero"
    assert fields["PROVHAD_PHASE"] == "render"
    assert "PROVHAD_EXCEPTION" not in fields


def test_level_filtering(journal: Entries) -> None:
    log.configure(target="journal", level="warning")
    logger = log.get()
    logger.debug("dropped")
    logger.info("dropped")
    logger.warning("kept")
    assert [e["PROVHAD_EVENT"] for e in journal] == ["kept"]


def test_secrets_are_masked(journal: Entries) -> None:
    log.configure(target="journal")
    log.get().info(
        "connect",
        host="db1",
        password="hunter2",
        DB_PASSWORD="hunter3",
        omapi_key="c2VjcmV0",
        token="t0k",
        settings={"user": "provhad", "secret": "s3cr3t", "inner": {"passwd": "p4ss"}},
    )
    (fields,) = journal
    for secret in ("hunter2", "hunter3", "c2VjcmV0", "t0k", "s3cr3t", "p4ss"):
        assert secret not in repr(fields)
    assert fields["PROVHAD_HOST"] == "db1"
    assert fields["PROVHAD_PASSWORD"] == "***"
    assert fields["PROVHAD_DB_PASSWORD"] == "***"
    assert fields["PROVHAD_OMAPI_KEY"] == "***"
    assert fields["PROVHAD_TOKEN"] == "***"
    assert fields["PROVHAD_SETTINGS"] == (
        '{"inner": {"passwd": "***"}, "secret": "***", "user": "provhad"}'
    )


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("DB_PASSWORD", True),
        ("passwd", True),
        ("client_secret", True),
        ("omapi_key", True),
        ("apikey", True),
        ("token", True),
        ("pass", True),
        ("mqtt-pass", True),
        ("pwd", True),
        ("auth", True),
        ("dsn", True),
        ("host", False),
        ("trigger", False),
        ("generation", False),
        ("files", False),
        ("author", False),
        ("authoritative", False),
        ("passed", False),
    ],
)
def test_is_secret(key: str, secret: bool) -> None:
    assert log.is_secret(key) is secret


def test_context_and_loggers_made_before_configure(journal: Entries) -> None:
    early = log.get("provhad.early")  # like a module-level logger, made at import time
    log.configure(target="journal")
    structlog.contextvars.bind_contextvars(cycle=7)
    early.info("tick")
    (fields,) = journal
    assert fields["PROVHAD_LOGGER"] == "provhad.early"
    assert fields["PROVHAD_CYCLE"] == "7"


def test_field_names() -> None:
    assert log.field_name("duration_ms") == "PROVHAD_DURATION_MS"
    assert log.field_name("dhcpd-restart.at time") == "PROVHAD_DHCPD_RESTART_AT_TIME"
    assert log.field_name("zählung") == "PROVHAD_Z_HLUNG"
    assert log.field_name("x" * 100) == "PROVHAD_" + "X" * 56


@pytest.mark.skipif(
    os.path.exists(log.JOURNAL_SOCKET), reason="this host runs a journald: it would be reached"
)
def test_without_a_journal_entries_vanish_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """libsystemd drops an entry silently when the journal socket does not exist (ENOENT);
    "auto" picks the journal only when it does."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    log.configure(target="journal", stream=out)
    log.get().info("published", generation=42)
    assert out.getvalue() == ""
    assert log.resolve_target("auto", stream=out, environ={}) == "plain"


@pytest.mark.parametrize(
    ("journal_stream", "expected"),
    [
        (None, "info published generation=42\nerror failed generation=43\n"),
        # under systemd stderr is a journal stream that reads "<N>" as the priority
        ("8:12345", "<6>published generation=42\n<3>failed generation=43\n"),
    ],
)
def test_a_journal_that_refuses_falls_back_to_the_stream(
    monkeypatch: pytest.MonkeyPatch, journal_stream: str | None, expected: str
) -> None:
    """(A stale socket gives ECONNREFUSED; the real one is in the real-journald test.)"""

    def refused(*_lines: str) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(systemd.journal, "sendv", refused)
    if journal_stream is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    out = io.StringIO()
    log.configure(target="journal", stream=out)
    log.get().info("published", generation=42)
    log.get().error("failed", generation=43)
    assert out.getvalue() == expected


# --- stdlib loggers (libraries, asyncio) -------------------------------------------------


def test_stdlib_records_become_journal_entries(journal: Entries) -> None:
    log.configure(target="journal")
    line = here() + 1
    logging.getLogger("aiomqtt").warning(
        "broker %s lost", "b1", extra={"password": "hunter2", "node": "n1"}
    )
    assert journal == [
        {
            "MESSAGE": "broker b1 lost node=n1 password=***",
            "PRIORITY": "4",
            "SYSLOG_IDENTIFIER": "provhad",
            "CODE_FILE": __file__,
            "CODE_LINE": str(line),
            "CODE_FUNC": "test_stdlib_records_become_journal_entries",
            "PROVHAD_EVENT": "broker b1 lost",
            "PROVHAD_LOGGER": "aiomqtt",
            "PROVHAD_NODE": "n1",
            "PROVHAD_PASSWORD": "***",
        }
    ]


def test_stdlib_and_structlog_share_level_and_output() -> None:
    out = io.StringIO()
    log.configure(target="plain", stream=out, level="info")
    logging.getLogger("asyncio").debug("dropped: below the level")
    log.get("provhad.cycle").info("published", generation=1)
    try:
        raise OSError("boom")
    except OSError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("aiomqtt").error("failed", extra={"token": "t0k"})
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines if line.startswith("ts=")] == [
        "level=info logger_name=provhad.cycle event=published generation=1",
        'level=error logger_name=asyncio event="Task exception was never retrieved"',
        "level=error logger_name=aiomqtt event=failed token=***",
    ]
    assert lines[2] == "Traceback (most recent call last):" and lines[-2] == "OSError: boom"


def test_provhad_modules_log_through_structlog() -> None:
    out = io.StringIO()
    log.configure(target="plain", stream=out)
    link = mqtt.MqttLink(config.MqttConfig(host="broker", password="hunter2"), "n1", print)
    loop: dict[str, object] = {}
    loop["self"] = loop
    link.publish_status(loop)  # not JSON: logged, the previous status stays
    first, *trace = out.getvalue().splitlines()
    assert first.split(" ", 1)[1] == (
        "level=error logger_name=provhad.mqtt "
        'event="mqtt status not encodable as JSON, keeping the previous one"'
    )
    assert trace[-1] == "ValueError: Circular reference detected"
    assert "hunter2" not in out.getvalue()


def test_reconfiguring_keeps_one_handler_and_others_handlers() -> None:
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        first, second = io.StringIO(), io.StringIO()
        log.configure(target="plain", stream=first)
        log.configure(target="plain", stream=second, level="warning")
        logging.getLogger("aiomqtt").warning("once")
        logging.getLogger("aiomqtt").info("dropped")
        assert first.getvalue() == ""
        assert second.getvalue().count("\n") == 1 and "event=once" in second.getvalue()
        assert other in root.handlers
    finally:
        root.removeHandler(other)


# --- console and plain --------------------------------------------------------------------


def test_console_output() -> None:
    out = io.StringIO()
    log.configure(target="console", stream=out)
    log.get().info("published", trigger="poll", generation=42, password="hunter2")
    text = out.getvalue()
    assert "\x1b[" not in text  # no colours when the stream is no terminal
    assert "published" in text
    assert "generation=42" in text
    assert "trigger=poll" in text
    assert "provhad" in text
    assert "hunter2" not in text


def test_plain_output() -> None:
    out = io.StringIO()
    log.configure(target="plain", stream=out, level="debug")
    log.get().info(
        "published", trigger="poll", generation=42, duration_ms=12.5, files=[FILE], rejected=3
    )
    log.get("provhad.db").debug("node state", node="db 2", token="abc")
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z level=info logger_name=provhad "
        r"event=published duration_ms=12\.5 "
        + re.escape(f'files="[\\"{FILE}\\"]"')
        + r" generation=42 rejected=3 trigger=poll",
        first,
    )
    assert second.endswith(
        'level=debug logger_name=provhad.db event="node state" node="db 2" token=***'
    )


def test_plain_exception_follows_the_line() -> None:
    out = io.StringIO()
    log.configure(target="plain", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.get().exception("cycle failed")
    lines = out.getvalue().splitlines()
    assert "level=error" in lines[0]
    assert 'event="cycle failed"' in lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="level"):
        log.configure(target="plain", level="loud")
    with pytest.raises(ValueError, match="target"):
        log.configure(target="syslog")


# --- target selection ---------------------------------------------------------------------


def test_explicit_targets_are_kept() -> None:
    for target in ("journal", "console", "plain"):
        assert log.resolve_target(target, environ={}) == target


def test_auto_journal_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        missing = str(tmp_path / "no-socket")
        assert (
            log.resolve_target("auto", stream=stream, journal_socket=missing, environ=env)
            == "journal"
        )
        # Inherited variable, but our stderr is somewhere else: not the journal stream.
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        assert (
            log.resolve_target("auto", stream=stream, journal_socket=missing, environ=env)
            == "plain"
        )


def test_auto_console_on_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w") as tty:
            socket_path = tmp_path / "journal.sock"
            socket_path.touch()
            assert (
                log.resolve_target("auto", stream=tty, journal_socket=str(socket_path), environ={})
                == "console"
            )
    finally:
        os.close(master)


def test_auto_without_terminal_prefers_an_existing_journal(tmp_path: Path) -> None:
    out = io.StringIO()
    socket_path = tmp_path / "journal.sock"
    assert (
        log.resolve_target("auto", stream=out, journal_socket=str(socket_path), environ={})
        == "plain"
    )
    socket_path.touch()
    assert (
        log.resolve_target("auto", stream=out, journal_socket=str(socket_path), environ={})
        == "journal"
    )


# --- a real journald ------------------------------------------------------------------------

JOURNALD = next(
    (p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
     if os.path.exists(p)),
    None,
)  # fmt: skip

# Runs in a private mount namespace: fresh tmpfs on /run and /var/log/journal, so the journald
# started there owns /run/systemd/journal/socket (where libsystemd sends) without touching the
# host's. Prints the entries as JSON lines, then what a stale socket (journald gone) leaves.
_IN_NAMESPACE = r"""
set -eu
mount -t tmpfs tmpfs /run
mkdir -p /var/log/journal && mount -t tmpfs tmpfs /var/log/journal
mkdir -p /run/systemd/journal
"$JOURNALD" >/dev/null 2>&1 & journald=$!
trap 'kill $journald 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not come up" >&2; exit 1; }
"$PYTHON" -c "$LOGGING"
journalctl --sync
journalctl --all --no-pager -o json SYSLOG_IDENTIFIER=provhad
kill $journald; wait $journald || true
echo "--- journald stopped" >&2
"$PYTHON" -c "$LOGGING_AFTER"
"""

_LOGGING = textwrap.dedent(
    """
    import logging
    from provhad import log
    log.configure(target="journal")
    log.get("provhad.cycle").info(
        "published", generation=42, files=["/a b", "/c"], stderr="line 1\\nline 2",
        password="hunter2", ok=True,
    )
    log.get().warning("huge", blob="x" * (1 << 20))  # beyond a datagram: a sealed memfd
    logging.getLogger("aiomqtt").error("broker %s lost", "b1", extra={"node": "n1"})
    """
)
_LOGGING_AFTER = textwrap.dedent(
    """
    from provhad import log
    log.configure(target="journal")
    log.get().error("journal gone", generation=43)
    """
)


@pytest.mark.skipif(
    JOURNALD is None or shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs root, unshare and systemd-journald (Debian package systemd)",
)
def test_a_real_journald_stores_the_fields() -> None:
    env = dict(
        os.environ,
        JOURNALD=str(JOURNALD),
        PYTHON=sys.executable,
        LOGGING=_LOGGING,
        LOGGING_AFTER=_LOGGING_AFTER,
    )
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_NAMESPACE],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    entries = {e["PROVHAD_EVENT"]: e for e in map(json.loads, proc.stdout.splitlines())}
    assert set(entries) == {"published", "huge", "broker b1 lost"}
    published = entries["published"]
    assert published["MESSAGE"] == (
        'published files="[\\"/a b\\", \\"/c\\"]" generation=42 ok=true password=*** '
        'stderr="line 1\\nline 2"'
    )
    assert published["PRIORITY"] == "6"
    assert published["_TRANSPORT"] == "journal"  # the native protocol, not stdout
    assert published["SYSLOG_IDENTIFIER"] == "provhad"
    assert published["CODE_FUNC"] == "<module>" and published["CODE_LINE"] == "5"
    assert published["PROVHAD_LOGGER"] == "provhad.cycle"
    assert published["PROVHAD_GENERATION"] == "42"
    assert published["PROVHAD_FILES"] == "/a b\n/c"
    assert published["PROVHAD_STDERR"] == "line 1\nline 2"
    assert published["PROVHAD_PASSWORD"] == "***"
    # (journald's own _CMDLINE holds the test's script, and so the secret)
    assert not [k for k, v in published.items() if "hunter2" in v and not k.startswith("_")]
    assert published["PROVHAD_OK"] == "true"
    assert entries["huge"]["PROVHAD_BLOB"] == "x" * (1 << 20), "blob differs"
    assert entries["huge"]["PRIORITY"] == "4"
    assert entries["broker b1 lost"]["PROVHAD_LOGGER"] == "aiomqtt"
    assert entries["broker b1 lost"]["PROVHAD_NODE"] == "n1"
    assert entries["broker b1 lost"]["PRIORITY"] == "3"
    # journald gone, its socket left behind: ECONNREFUSED, so the entry goes to stderr
    after = proc.stderr.split("--- journald stopped\n", 1)[1]
    assert after == "error journal gone generation=43\n"
