"""structlog set up for the journal (one field per key), a terminal, or plain key=value lines.

In the journal every entry carries MESSAGE (the event and its keys on one line, a traceback
on the lines after it), PRIORITY, SYSLOG_IDENTIFIER=provhad, CODE_FILE/CODE_LINE/CODE_FUNC and
one ``PROVHAD_<KEY>`` field per key (upper-cased, anything but A-Z and 0-9 turned into ``_``),
so ``journalctl -u provhad PROVHAD_EVENT=published`` works. Lists become newline-joined
values, dicts JSON.

The journal's native protocol is written here rather than through ``systemd.journal.send``:
that one cannot be given a socket path, so it could not be tested against a socket of our own.
An entry too big for one datagram goes in a sealed memfd, as libsystemd does. If the journal
cannot be reached the entry goes to stderr instead; logging never raises.

Records of stdlib loggers (aiomqtt, asyncio, ...) go through the same processors and the same
sink (:func:`configure` puts a handler with structlog's ProcessorFormatter on the root logger);
their ``extra`` values become keys like any other. provhad's own modules log with :func:`get`.

Secrets are masked: the value of any key (also inside dict values) whose lower-cased name
contains ``password``, ``passwd``, ``passphrase``, ``secret``, ``token``, ``credential``,
``key`` or ``cookie``, or which has ``pass``, ``pwd``, ``auth``, ``authorization``, ``psk`` or
``dsn`` as a ``_``/``-``/``.``-separated word, is replaced with ``***``. Anything else
(including the event text itself) is logged as given.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

IDENTIFIER = "provhad"
FIELD_PREFIX = "PROVHAD_"
MASK = "***"
TARGETS = ("auto", "journal", "console", "plain")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog(3) priorities; structlog's method names as add_log_level records them.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3}
_PRIORITY_DEFAULT = 6
_PRIORITY_CRITICAL = 2

_SECRET_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "key",
    "cookie",
)
_SECRET_WORDS = frozenset({"pass", "pwd", "auth", "authorization", "psk", "dsn"})
_WORD_SPLIT = re.compile(r"[_\-.]+")
_FIELD_BAD = re.compile(r"[^A-Z0-9]")
_FIELD_MAX = 64  # journald drops fields with longer names
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f]')
# Keys that the renderers place themselves instead of as ordinary key=value pairs.
_CALLSITE = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}
_SEND_TIMEOUT = 1.0
_MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL

_sink_lock = threading.Lock()
_current_sink: _Sink | None = None


# --- processors ---------------------------------------------------------------------------


def is_secret(key: str) -> bool:
    """Whether a key's value must not be logged (see the module docstring for the rule)."""
    name = key.lower()
    if any(part in name for part in _SECRET_PARTS):
        return True
    return any(word in _SECRET_WORDS for word in _WORD_SPLIT.split(name))


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: MASK if is_secret(str(k)) else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def mask_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace the values of secret-looking keys with ``***``."""
    for key, value in event_dict.items():
        if key == "event":
            continue
        event_dict[key] = MASK if is_secret(key) else _masked(value)
    return event_dict


def field_name(key: str) -> str:
    """``duration_ms`` -> ``PROVHAD_DURATION_MS``: a name journald accepts."""
    return (FIELD_PREFIX + _FIELD_BAD.sub("_", key.upper()))[:_FIELD_MAX]


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


def _field_value(value: Any) -> str:
    # Newline-joined: paths and reasons may hold spaces, practically never a newline.
    if isinstance(value, list | tuple | set | frozenset):
        return "\n".join(_scalar(v) for v in value)
    return _scalar(value)


def _text_value(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return json.dumps(list(value), default=str, ensure_ascii=False)
    text = _scalar(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _pairs(event_dict: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_text_value(event_dict[k])}" for k in sorted(event_dict))


def _priority(method: str, event_dict: Mapping[str, Any]) -> int:
    level = str(event_dict.get("level", method))
    if level in ("critical", "fatal"):
        return _PRIORITY_CRITICAL
    return _PRIORITY.get(level, _PRIORITY_DEFAULT)


@dataclass(frozen=True)
class JournalEntry:
    """One rendered entry: the native-protocol datagram, and a line for stderr if that fails."""

    datagram: bytes
    fallback: str


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """The journal's native protocol: ``KEY=VALUE\\n``, or for a value holding a newline
    ``KEY\\n<64-bit little-endian length><value>\\n``."""
    out = bytearray()
    for key, value in fields:
        name = key.encode("ascii")
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


class JournalRenderer:
    """Final processor: the event dict as a :class:`JournalEntry`."""

    def __init__(self, identifier: str = IDENTIFIER, prefix_fallback: bool = False) -> None:
        self._identifier = identifier
        # Under systemd stderr is itself a journal stream that understands "<N>" prefixes.
        self._prefix_fallback = prefix_fallback

    def __call__(
        self, _logger: WrappedLogger, method: str, event_dict: EventDict
    ) -> tuple[tuple[JournalEntry], dict[str, Any]]:
        priority = _priority(method, event_dict)
        level = str(event_dict.pop("level", method))
        event = str(event_dict.pop("event", ""))
        trailer = [str(event_dict.pop(k)) for k in ("stack", "exception") if k in event_dict]
        code = [(_CALLSITE[k], str(event_dict.pop(k))) for k in _CALLSITE if k in event_dict]
        logger = event_dict.pop("logger_name", None)
        message = " ".join(filter(None, (event, _pairs(event_dict))))
        message = "\n".join([message, *trailer])
        fields = [
            ("MESSAGE", message),
            ("PRIORITY", str(priority)),
            ("SYSLOG_IDENTIFIER", self._identifier),
            *code,
            (FIELD_PREFIX + "EVENT", event),
        ]
        if logger is not None:
            fields.append((FIELD_PREFIX + "LOGGER", str(logger)))
        fields += [(field_name(k), _field_value(v)) for k, v in event_dict.items()]
        head = f"<{priority}>" if self._prefix_fallback else f"{level} "
        return (JournalEntry(encode_fields(fields), head + message),), {}


class PlainRenderer:
    """Final processor: ``ts=... level=... logger_name=... event=... k=v ...`` (rest sorted)."""

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        head = [
            f"{k}={_text_value(event_dict.pop(k))}"
            for k in ("ts", "level", "logger_name", "event")
            if k in event_dict
        ]
        trailer = [str(event_dict.pop(k)) for k in ("stack", "exception") if k in event_dict]
        line = " ".join(filter(None, (" ".join(head), _pairs(event_dict))))
        return "\n".join([line, *trailer])


# --- sinks (the wrapped loggers) ----------------------------------------------------------


class _Sink:
    def msg(self, message: Any) -> None:
        raise NotImplementedError

    # structlog calls the method named after the level.
    def debug(self, message: Any) -> None:
        self.msg(message)

    info = warning = warn = error = critical = exception = fatal = log = debug

    def close(self) -> None:
        pass


class StreamSink(_Sink):
    """Lines to ``stream``, or to whatever ``sys.stderr`` is at the time of writing."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: Any) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock, contextlib.suppress(Exception):  # never fail the caller for a log line
            stream.write(f"{message}\n")
            stream.flush()


class JournalSink(_Sink):
    """Sends :class:`JournalEntry` datagrams to the journal socket; stderr if that fails."""

    def __init__(self, socket_path: str, fallback: StreamSink) -> None:
        self._address = socket_path
        self._fallback = fallback
        self._sock: socket.socket | None = None
        with contextlib.suppress(OSError):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(_SEND_TIMEOUT)

    def msg(self, message: Any) -> None:
        entry = cast(JournalEntry, message)
        try:
            self._send(entry.datagram)
        except (OSError, ValueError):
            self._fallback.msg(entry.fallback)

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise OSError(errno.EBADF, "no journal socket")
        try:
            self._sock.sendto(data, self._address)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        assert self._sock is not None
        fd = os.memfd_create("provhad-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # journald accepts a memfd from an unprivileged sender only when it is sealed.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _MEMFD_SEALS)
            # Not socket.send_fds(): before Python 3.12 it drops the address argument.
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))
            self._sock.sendmsg([], [rights], 0, self._address)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


# --- configuration ------------------------------------------------------------------------


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """$JOURNAL_STREAM names the device:inode of the journal stream systemd connected us to;
    comparing it with ``stream`` rules out a child that inherited the variable but not the fd."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def resolve_target(
    target: str,
    *,
    stream: TextIO | None = None,
    journal_socket: str = "/run/systemd/journal/socket",
    environ: Mapping[str, str] | None = None,
) -> str:
    """The concrete target for ``target``; "auto" picks journal under systemd (stderr is the
    journal stream) or when stderr is no TTY and the journal socket exists, console on a TTY,
    plain otherwise."""
    if target not in TARGETS:
        raise ValueError(f"unknown log target {target!r} (one of {', '.join(TARGETS)})")
    if target != "auto":
        return target
    out = stream if stream is not None else sys.stderr
    env = os.environ if environ is None else environ
    if _is_journal_stream(out, env):
        return "journal"
    if _isatty(out):
        return "console"
    if os.path.exists(journal_socket):
        return "journal"
    return "plain"


class _SinkHandler(logging.Handler):
    """The root logger's handler: stdlib records (ours and libraries', e.g. aiomqtt, asyncio)
    run through the same processors as structlog's own entries, via ProcessorFormatter, whose
    last processor hands the rendered entry to the same sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.format(record)
        except Exception:  # never fail the caller for a log line
            self.handleError(record)


class _Deliver:
    """Last processor of the stdlib path: passes the rendered entry to the sink."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def __call__(self, _logger: WrappedLogger, _method: str, rendered: Any) -> str:
        # JournalRenderer returns structlog's (args, kwargs); the line renderers a string.
        self._sink.msg(rendered[0][0] if isinstance(rendered, tuple) else rendered)
        return ""


# What every LogRecord has; the rest came from ``extra=``. "message" and "asctime" are set
# by formatters (pytest's, say) that saw the record first.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _from_record(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's logger name (as ``logger_name``, like structlog's entries) and its
    ``extra=`` values as keys."""
    record = event_dict["_record"]
    event_dict["logger_name"] = record.name
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            event_dict.setdefault(key, value)
    return event_dict


def _route_stdlib(processors: list[Processor], sink: _Sink, min_level: int) -> None:
    """Replace the root logger's handlers with one that renders through ``processors``."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_from_record],
        processors=[
            *processors[:-1],
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            processors[-1],
            _Deliver(sink),
        ],
    )
    handler = _SinkHandler(min_level)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old, _SinkHandler):  # others' (pytest's, say) stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min_level)


def configure(
    *,
    target: str = "auto",
    level: str = "info",
    journal_socket: str = "/run/systemd/journal/socket",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and the stdlib root logger for the whole process; may be called
    again to change it.

    ``stream`` is where console and plain lines go (and journal entries that cannot be
    sent); None means ``sys.stderr`` as it is when a line is written. Records of stdlib
    loggers (libraries such as aiomqtt and asyncio) get the same level filter, fields,
    masking and output as structlog's own entries.
    """
    global _current_sink
    try:
        min_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LEVELS)})") from None
    chosen = resolve_target(target, stream=stream, journal_socket=journal_socket)
    lines = StreamSink(stream)
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        mask_secrets,
        structlog.processors.StackInfoRenderer(),
    ]
    sink: _Sink
    processors: list[Processor]
    if chosen == "journal":
        sink = JournalSink(journal_socket, lines)
        processors = [
            *common,
            structlog.processors.format_exc_info,
            structlog.processors.CallsiteParameterAdder(
                {
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                }
            ),
            JournalRenderer(prefix_fallback=bool(os.environ.get("JOURNAL_STREAM"))),
        ]
    elif chosen == "console":
        sink = lines
        processors = [
            *common,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(
                colors=_isatty(stream if stream is not None else sys.stderr)
            ),
        ]
    else:
        sink = lines
        processors = [
            *common,
            structlog.processors.format_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            PlainRenderer(),
        ]
    with _sink_lock:
        previous, _current_sink = _current_sink, sink
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *_args: sink,
        context_class=dict,
        # Loggers are resolved per call, so configure() also reaches module-level loggers.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(processors, sink, min_level)
    if previous is not None:
        previous.close()


def get(name: str = "provhad") -> FilteringBoundLogger:
    """A logger that tags its entries with ``logger_name=name``; usable before configure()."""
    # A lazy proxy: it follows later configure() calls, so module-level loggers are fine.
    return cast(FilteringBoundLogger, structlog.get_logger(logger_name=name))
