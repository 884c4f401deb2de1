"""structlog output: native journal datagrams on a real socket, console and plain lines."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from provhad import config, log, mqtt

TIMEOUT = 5.0
FILE = "/etc/dhcp-nmsprime/modems-host.conf"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    log.configure(target="plain", stream=io.StringIO())  # closes the test's journal socket
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, log._SinkHandler):
            root.removeHandler(handler)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(TIMEOUT)
        yield path, sock


def parse(data: bytes) -> list[tuple[str, str]]:
    """Decode the journal's native protocol, text and binary (length-prefixed) forms."""
    fields = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = end + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        fields.append((key.decode("ascii"), value.decode()))
    return fields


def entry(sock: socket.socket) -> dict[str, str]:
    """The next datagram as a dict; every field must appear once."""
    fields = parse(sock.recv(1 << 20))
    out = dict(fields)
    assert len(out) == len(fields), fields
    return out


def nothing_pending(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1 << 20)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def here() -> int:
    """Line number of the caller."""
    return sys._getframe(1).f_lineno


# --- journal ------------------------------------------------------------------------------


def test_journal_entry_has_one_field_per_key(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path)
    logger = log.get()
    line = here() + 1
    logger.info(
        "published", trigger="poll", generation=42, duration_ms=12.5, files=[FILE], rejected=3
    )
    assert entry(sock) == {
        "MESSAGE": (
            f'published duration_ms=12.5 files=["{FILE}"] generation=42 rejected=3 trigger=poll'
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


def test_multiline_values_use_the_binary_form(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path)
    other = "/etc/dhcp-nmsprime/cmts_gws/1.conf"
    log.get("provhad.publish").warning(
        "dhcpd rejected", files=[FILE, other], stderr="line 1\nline 2", ok=False, extra=None
    )
    raw = sock.recv(1 << 20)
    stderr = b"line 1\nline 2"
    assert b"PROVHAD_STDERR\n" + struct.pack("<Q", len(stderr)) + stderr + b"\n" in raw
    fields = dict(parse(raw))
    assert fields["PROVHAD_STDERR"] == "line 1\nline 2"
    assert fields["PROVHAD_FILES"] == f"{FILE}\n{other}"
    assert fields["PROVHAD_OK"] == "false"
    assert fields["PROVHAD_EXTRA"] == "null"
    assert fields["PROVHAD_LOGGER"] == "provhad.publish"
    assert fields["PRIORITY"] == "4"
    # MESSAGE stays one line: the value is quoted with its newline escaped.
    assert fields["MESSAGE"] == (
        f'dhcpd rejected extra=null files=["{FILE}", "{other}"] ok=false stderr="line 1\\nline 2"'
    )


def test_priorities_and_traceback(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path, level="debug")
    logger = log.get()
    for method, priority in [
        (logger.debug, "7"),
        (logger.info, "6"),
        (logger.warning, "4"),
        (logger.error, "3"),
        (logger.critical, "2"),
    ]:
        method("step")
        assert entry(sock)["PRIORITY"] == priority
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("cycle failed", phase="render")
    fields = entry(sock)
    assert fields["PRIORITY"] == "3"
    first, *rest = fields["MESSAGE"].split("\n")
    assert first == "cycle failed phase=render"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ZeroDivisionError: division by zero"
    assert fields["PROVHAD_PHASE"] == "render"
    assert "PROVHAD_EXCEPTION" not in fields


def test_level_filtering(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path, level="warning")
    logger = log.get()
    logger.debug("dropped")
    logger.info("dropped")
    logger.warning("kept")
    # Datagrams arrive in order: the first one must be the warning.
    assert entry(sock)["PROVHAD_EVENT"] == "kept"
    assert nothing_pending(sock)


def test_secrets_are_masked(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path)
    log.get().info(
        "connect",
        host="db1",
        password="hunter2",
        DB_PASSWORD="hunter3",
        omapi_key="c2VjcmV0",
        token="t0k",
        settings={"user": "provhad", "secret": "s3cr3t", "inner": {"passwd": "p4ss"}},
    )
    raw = sock.recv(1 << 20)
    for secret in (b"hunter2", b"hunter3", b"c2VjcmV0", b"t0k", b"s3cr3t", b"p4ss"):
        assert secret not in raw
    fields = dict(parse(raw))
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


def test_context_and_loggers_made_before_configure(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    early = log.get("provhad.early")  # like a module-level logger, made at import time
    log.configure(target="journal", journal_socket=path)
    structlog.contextvars.bind_contextvars(cycle=7)
    early.info("tick")
    fields = entry(sock)
    assert fields["PROVHAD_LOGGER"] == "provhad.early"
    assert fields["PROVHAD_CYCLE"] == "7"


def test_field_names() -> None:
    assert log.field_name("duration_ms") == "PROVHAD_DURATION_MS"
    assert log.field_name("dhcpd-restart.at time") == "PROVHAD_DHCPD_RESTART_AT_TIME"
    assert log.field_name("zählung") == "PROVHAD_Z_HLUNG"
    assert log.field_name("x" * 100) == "PROVHAD_" + "X" * 56


def test_unreachable_journal_falls_back_to_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    log.configure(target="journal", journal_socket=str(tmp_path / "missing"), stream=out)
    log.get().info("published", generation=42)
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(stale)
    log.configure(target="journal", journal_socket=stale, stream=out)
    log.get().error("failed", generation=43)
    assert out.getvalue().splitlines() == [
        "info published generation=42",
        "error failed generation=43",
    ]


def test_fallback_has_priority_prefix_under_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()
    log.configure(target="journal", journal_socket=str(tmp_path / "missing"), stream=out)
    log.get().warning("db down", node="db1")
    assert out.getvalue() == "<4>db down node=db1\n"


def test_oversized_entry_goes_in_a_sealed_memfd(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path)
    big = "x" * (4 << 20)  # larger than any default SO_SNDBUF: sendto fails with EMSGSIZE
    log.get().info("huge", blob=big)
    data, fds, _flags, _addr = socket.recv_fds(sock, 1024, 1)
    assert data == b""
    assert len(fds) == 1
    try:
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
        # journald reads the memfd from offset 0, whatever the shared file offset is.
        fields = dict(parse(os.pread(fds[0], os.fstat(fds[0]).st_size, 0)))
    finally:
        os.close(fds[0])
    assert fields["PROVHAD_EVENT"] == "huge"
    assert fields["PROVHAD_BLOB"] == big, "blob differs"  # the message, not 4 MiB of diff


# --- stdlib loggers (libraries, asyncio) -------------------------------------------------


def test_stdlib_records_become_journal_entries(journal: tuple[str, socket.socket]) -> None:
    path, sock = journal
    log.configure(target="journal", journal_socket=path)
    line = here() + 1
    logging.getLogger("aiomqtt").warning(
        "broker %s lost", "b1", extra={"password": "hunter2", "node": "n1"}
    )
    raw = sock.recv(1 << 20)
    assert b"hunter2" not in raw
    assert dict(parse(raw)) == {
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
        + re.escape(f'files=["{FILE}"]')
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
