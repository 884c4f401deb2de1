"""structlog set up for the journal (one field per key), a terminal, or logfmt lines.

In the journal every entry carries MESSAGE (the event and its keys on one line, a traceback
on the lines after it), PRIORITY, SYSLOG_IDENTIFIER=provhad, CODE_FILE/CODE_LINE/CODE_FUNC and
one ``PROVHAD_<KEY>`` field per key (upper-cased, anything but A-Z and 0-9 turned into ``_``),
so ``journalctl -u provhad PROVHAD_EVENT=published`` works. Lists become newline-joined
values, dicts JSON.

Entries reach the journal through systemd-python (``systemd.journal.sendv``, i.e. libsystemd's
sd_journal_sendv, which also moves an entry too big for one datagram into a sealed memfd). If
the journal cannot be reached the entry goes to stderr instead; logging never raises.

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

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO, cast

import structlog
import systemd.journal
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

IDENTIFIER = "provhad"
FIELD_PREFIX = "PROVHAD_"
MASK = "***"
TARGETS = ("auto", "journal", "console", "plain")
#: where libsystemd sends entries (fixed in it); "auto" looks for it
JOURNAL_SOCKET = "/run/systemd/journal/socket"

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
# Keys that the journal renderer places in fields of their own instead of key=value pairs.
_CALLSITE = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}
_TRAILERS = ("stack", "exception")

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


#: ``k=v`` pairs of the journal's MESSAGE and of plain lines (structlog's logfmt)
_LOGFMT = structlog.processors.LogfmtRenderer(sort_keys=True, bool_as_flag=False)


def _logfmt_value(value: Any) -> Any:
    # logfmt has no lists or maps: JSON keeps them readable and parseable.
    if isinstance(value, list | tuple | set | frozenset | Mapping):
        return json.dumps(
            value if isinstance(value, Mapping) else list(value),
            sort_keys=True,
            default=str,
            ensure_ascii=False,
        )
    return "null" if value is None else value


#: plain lines: these keys first, the rest sorted
_PLAIN = structlog.processors.LogfmtRenderer(
    sort_keys=True,
    key_order=["ts", "level", "logger_name", "event"],
    drop_missing=True,
    bool_as_flag=False,
)


def _pairs(event_dict: Mapping[str, Any], renderer: Processor = _LOGFMT) -> str:
    return str(renderer(None, "", {k: _logfmt_value(v) for k, v in event_dict.items()}))


def _pop_trailer(event_dict: EventDict) -> list[str]:
    """The stack and traceback: they follow the line on lines of their own (logfmt would
    escape their newlines)."""
    return [str(event_dict.pop(k)) for k in _TRAILERS if k in event_dict]


def _plain(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    """Final processor of the plain target: one logfmt line, then any traceback."""
    trailer = _pop_trailer(event_dict)
    return "\n".join([_pairs(event_dict, _PLAIN), *trailer])


def _priority(method: str, event_dict: Mapping[str, Any]) -> int:
    level = str(event_dict.get("level", method))
    if level in ("critical", "fatal"):
        return _PRIORITY_CRITICAL
    return _PRIORITY.get(level, _PRIORITY_DEFAULT)


@dataclass(frozen=True)
class JournalEntry:
    """One rendered entry: its fields, and a line for stderr if the journal cannot be reached."""

    fields: tuple[tuple[str, str], ...]
    fallback: str


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
        trailer = _pop_trailer(event_dict)
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
        return (JournalEntry(tuple(fields), head + message),), {}


# --- sinks (the wrapped loggers) ----------------------------------------------------------


class _Sink:
    def msg(self, message: Any) -> None:
        raise NotImplementedError

    # structlog calls the method named after the level.
    def debug(self, message: Any) -> None:
        self.msg(message)

    info = warning = warn = error = critical = exception = fatal = log = debug


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
    """Hands :class:`JournalEntry` fields to the journal; stderr if that fails."""

    def __init__(self, fallback: StreamSink) -> None:
        self._fallback = fallback

    def msg(self, message: Any) -> None:
        entry = cast(JournalEntry, message)
        # sendv, not send(): send() would fill in CODE_* from its caller, i.e. from here.
        try:
            systemd.journal.sendv(*(f"{key}={value}" for key, value in entry.fields))
        except (OSError, ValueError, TypeError):
            self._fallback.msg(entry.fallback)


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
    journal_socket: str = JOURNAL_SOCKET,
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
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and the stdlib root logger for the whole process; may be called
    again to change it.

    ``stream`` is where console and plain lines go (and journal entries that cannot be
    sent); None means ``sys.stderr`` as it is when a line is written. Records of stdlib
    loggers (libraries such as aiomqtt and asyncio) get the same level filter, fields,
    masking and output as structlog's own entries.
    """
    try:
        min_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LEVELS)})") from None
    chosen = resolve_target(target, stream=stream)
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
        sink = JournalSink(lines)
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
            _plain,
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *_args: sink,
        context_class=dict,
        # Loggers are resolved per call, so configure() also reaches module-level loggers.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(processors, sink, min_level)


def get(name: str = "provhad") -> FilteringBoundLogger:
    """A logger that tags its entries with ``logger_name=name``; usable before configure()."""
    # A lazy proxy: it follows later configure() calls, so module-level loggers are fine.
    return cast(FilteringBoundLogger, structlog.get_logger(logger_name=name))
