"""``provhad check``: a Nagios/Icinga plugin reading the daemon's state file.

One status line, ``PROVHAD OK|WARNING|CRITICAL|UNKNOWN - text | perfdata``, and the exit status
0/1/2/3 of the plugin conventions. It only reads ``state.json`` (written by ``provhad run``
after every cycle) and checks the recorded pid, so it needs no database access and no privilege
beyond reading the state directory. :func:`evaluate` is pure; :func:`run` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provhad import db
from provhad.config import CheckConfig, Config
from provhad.state import STATE_FILE, State

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
_SEVERITY = {"ok": OK, "warning": WARNING, "critical": CRITICAL}
_TEXT_MAX = 160  # of one problem's text: the status line must stay readable


@dataclass(frozen=True)
class Verdict:
    """The plugin's answer: exit status, text and performance data."""

    code: int
    text: str
    perfdata: str = ""

    def line(self) -> str:
        out = f"PROVHAD {_NAMES[self.code]} - {self.text}"
        return f"{out} | {self.perfdata}" if self.perfdata else out


def _clean(text: str) -> str:
    """One line without '|' (it would start the performance data)."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 3] + "..."


def _count_level(value: int, warning: int, critical: int) -> int:
    if critical and value >= critical:
        return CRITICAL
    if warning and value >= warning:
        return WARNING
    return OK


def _range(threshold: int) -> str:
    """A count threshold ("at this many or more") as a Nagios range ("more than N")."""
    return str(threshold - 1) if threshold else ""


def _age(at: str, now: dt.datetime) -> float | None:
    try:
        then = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    return max(0.0, (now - then).total_seconds())


def _hosts(state: State) -> int:
    return sum(state.counts.get(k, 0) for k in ("modems", "mtas", "endpoints"))


def evaluate(
    state: State,
    limits: CheckConfig,
    now: dt.datetime,
    not_running: str | None = None,
    preferred_node: str = "",
) -> Verdict:
    """The verdict for ``state``. ``not_running`` says why the daemon is not running (None:
    it runs); ``preferred_node`` is the first configured database node."""
    problems: list[tuple[int, str]] = []

    def add(level: int, text: str) -> None:
        if level != OK:
            problems.append((level, _clean(text)))

    if not_running is not None:
        add(CRITICAL, f"daemon not running: {not_running}")

    success_age = _age(state.last_success_at, now) if state.last_success_at else None
    if success_age is not None:
        age, what = success_age, f"last success {success_age:.0f} s ago"
    else:
        # never succeeded: count from the daemon's start so a fresh start is not critical
        started = _age(state.started_at, now) if state.started_at else None
        age = started if started is not None else float("inf")
        what = "no successful cycle" + (f" in {started:.0f} s" if started is not None else "")
    if age >= limits.age_critical:
        add(CRITICAL, what)
    elif age >= limits.age_warning:
        add(WARNING, what)

    if state.held_reason.startswith("shrink guard"):
        add(CRITICAL, f"HELD: {state.held_reason} (provhad confirm-shrink)")
    elif state.held_reason:
        add(WARNING, f"held back: {state.held_reason}")
    elif not state.last_cycle_ok and state.last_error and state.db_ok:
        add(WARNING, f"last cycle failed: {state.last_error}")

    if not state.dhcpd_last_restart_ok:
        add(CRITICAL, f"dhcpd restart FAILED: {state.dhcpd_error}")
    elif state.restart_pending:
        add(
            WARNING,
            f"dhcpd restart pending (live gen {state.generation}, dhcpd runs gen "
            f"{state.dhcpd_running_generation})",
        )

    if state.hook_ok is False:
        add(WARNING, f"configfile build FAILED: {state.hook_error}")

    if not state.db_ok:
        add(_SEVERITY[limits.db_down], f"database DOWN: {state.db_error or 'no node'}")
    elif preferred_node and state.db_node and state.db_node != preferred_node:
        add(
            _SEVERITY[limits.db_fallback],
            f"database degraded: reading from {state.db_node}, not {preferred_node}",
        )

    rejected = len(state.rejected)
    add(
        _count_level(rejected, limits.rejected_warning, limits.rejected_critical),
        f"{rejected} rejected rows",
    )
    missing = state.missing_configfiles
    add(
        _count_level(
            missing, limits.missing_configfiles_warning, limits.missing_configfiles_critical
        ),
        f"{missing} TFTP configfiles missing",
    )

    age_perf = f"{success_age:.0f}s" if success_age is not None else "U"
    perfdata = " ".join(
        [
            f"age={age_perf};{limits.age_warning:g};{limits.age_critical:g};0",
            f"hosts={_hosts(state)};;;0",
            f"rejected={rejected};{_range(limits.rejected_warning)};"
            f"{_range(limits.rejected_critical)};0",
            f"missing_configfiles={missing};{_range(limits.missing_configfiles_warning)};"
            f"{_range(limits.missing_configfiles_critical)};0",
            f"generation={state.generation if state.generation is not None else 'U'};;;0",
        ]
    )
    if problems:
        problems.sort(key=lambda p: -p[0])  # stable: the most severe first, else in order
        return Verdict(problems[0][0], "; ".join(text for _, text in problems), perfdata)
    gen = f"live gen {state.generation}" if state.generation is not None else "no live set"
    summary = f"{gen}, {_hosts(state)} hosts, {what}, db {state.db_node or '-'}"
    return Verdict(OK, _clean(summary), perfdata)


def not_running(state: State) -> str | None:
    """Why the daemon that wrote ``state`` is not running, or None when it runs.

    The pid must exist and (where /proc tells) belong to a provhad process: after a crash the
    pid may have been reused by something else.
    """
    if state.status == "stopped":
        return "stopped (state file says so)"
    if state.pid <= 0:
        return "no pid in the state file"
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return f"pid {state.pid} is gone"
    except PermissionError:
        pass  # exists, but is another user's: that is expected (provhad runs as its own user)
    try:
        argv = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None  # no /proc to tell: trust the pid
    # empty: a process between exec and its first instruction, or a zombie; cannot tell
    if argv == [b""] or any(_names_provhad(arg) for arg in argv):
        return None
    return f"pid {state.pid} is not provhad"


def _names_provhad(arg: bytes) -> bool:
    """``.../bin/provhad`` (the script, also as an interpreter's argument) or ``provhad.cli``."""
    name = arg.rsplit(b"/", 1)[-1]
    return name == b"provhad" or name.startswith(b"provhad.")


def load_state(state_dir: Path) -> State:
    """The saved state. Raises OSError or ValueError when it is missing or unreadable."""
    return State.parse(json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8")))


def preferred_node(cfg: Config) -> str:
    """The first database node the daemon tries, spelt as the state file spells nodes."""
    nodes = db.nodes(cfg.database)
    return str(nodes[0]) if nodes else ""


def run(cfg: Config, now: dt.datetime | None = None) -> int:
    """Print the status line for the daemon configured by ``cfg``; return the exit status."""
    path = cfg.paths.under_root(cfg.paths.state_dir) / STATE_FILE
    try:
        state = load_state(path.parent)
    except FileNotFoundError:
        verdict = Verdict(UNKNOWN, f"no state file {path}: the daemon has never run")
    except PermissionError:
        verdict = Verdict(
            UNKNOWN, f"cannot read {path}: permission denied (add this user to group provhad)"
        )
    except (OSError, ValueError, TypeError) as exc:
        verdict = Verdict(UNKNOWN, _clean(f"cannot read {path}: {exc}"))
    else:
        verdict = evaluate(
            state,
            cfg.check,
            now or dt.datetime.now(dt.UTC),
            not_running(state),
            preferred_node(cfg),
        )
    print(verdict.line())
    return verdict.code


def thresholds(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` with the thresholds given on the command line (None: keep the file's)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, check=replace(cfg.check, **given)) if given else cfg
