"""``provhad check``: a Nagios/Icinga plugin reading the daemon's state file and asking
systemd about the services it feeds.

One status line, ``PROVHAD OK|WARNING|CRITICAL|UNKNOWN - text | perfdata``, and the exit status
0/1/2/3 of the plugin conventions. It reads ``state.json`` (written by ``provhad run`` after
every cycle), checks the recorded pid and asks systemd (``systemctl show``, read-only) whether
dhcpd and the other configured units are active, so it needs no database access and no
privilege beyond reading the state directory. :func:`evaluate` is pure; :func:`run` does the
I/O. :func:`status_code` gives ``provhad status`` its LSB-style exit status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provhad import db, services
from provhad.config import CheckConfig, Config
from provhad.report import summarise
from provhad.services import UnitState
from provhad.state import STATE_FILE, State

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
_SEVERITY = {"ok": OK, "warning": WARNING, "critical": CRITICAL}
_TEXT_MAX = 160  # of one problem's text: the status line must stay readable
#: how long ``systemctl show`` may take (a plugin has about 10 s in all)
SYSTEMCTL_TIMEOUT = 5.0
#: dhcpd may have entered "active" this much before the restart began (second-resolution
#: timestamps in the state file, clock reads in two processes)
_RESTART_SLACK = 2.0

#: ``provhad status`` exit codes, after the LSB ``status`` action: 0 running (and healthy),
#: 1 dead although the state file says it runs, 3 not running, 4 unknown (no state file);
#: 150 (LSB's range for applications) running with problems
STATUS_OK, STATUS_DEAD, STATUS_STOPPED, STATUS_UNKNOWN, STATUS_PROBLEMS = 0, 1, 3, 4, 150


@dataclass(frozen=True)
class Verdict:
    """The plugin's answer: exit status, text and performance data."""

    code: int
    text: str
    perfdata: str = ""

    def line(self) -> str:
        out = f"PROVHAD {_NAMES[self.code]} - {self.text}"
        return f"{out} | {self.perfdata}" if self.perfdata else out


@dataclass(frozen=True)
class Units:
    """What systemd said about the units ``provhad check`` watches."""

    dhcpd: UnitState | None = None
    others: tuple[UnitState, ...] = ()
    #: why systemd could not be asked ("" when it answered or nothing was asked)
    error: str = ""
    #: the units that were to be asked (named in ``error``)
    asked: tuple[str, ...] = ()


def _clean(text: str) -> str:
    """One line without '|' (it would start the performance data), summarised, not cut."""
    return summarise(text.replace("|", "/"), _TEXT_MAX)


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


def _dhcpd_predates_restart(state: State, dhcpd: UnitState, now: dt.datetime) -> str | None:
    """When dhcpd's unit entered "active" before provhad's last successful restart began: that
    restart did not reach this dhcpd, which may still run an older set. (A later start, by
    anyone, reads the live files: fine.)"""
    if not (state.dhcpd_last_restart_at and state.dhcpd_last_restart_ok):
        return None
    if not dhcpd.running or dhcpd.active_for is None:
        return None
    restarted = _age(state.dhcpd_last_restart_at, now)
    if restarted is None:
        return None
    began = restarted + state.dhcpd_restart_s  # seconds ago
    if dhcpd.active_for <= began + _RESTART_SLACK:
        return None
    since = (now - dt.timedelta(seconds=dhcpd.active_for)).isoformat(timespec="seconds")
    return (
        f"{dhcpd.unit} active since {since}, before provhad restarted it at "
        f"{state.dhcpd_last_restart_at}: it may not run live gen {state.generation}"
    )


def _unit_problems(state: State, units: Units, now: dt.datetime) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    if units.error:
        out.append((WARNING, f"cannot ask systemd about {', '.join(units.asked)}: {units.error}"))
    if units.dhcpd is not None:
        if not units.dhcpd.running:
            out.append((CRITICAL, f"dhcpd DOWN: {units.dhcpd.describe()}"))
        else:
            stale = _dhcpd_predates_restart(state, units.dhcpd, now)
            if stale:
                out.append((WARNING, stale))
    out += [(WARNING, f"{u.describe()}, not active") for u in units.others if not u.running]
    return out


def _reload_errors(state: State) -> Mapping[str, str]:
    """The daemon's last failed reload per service (named, chrony); a state file from before
    the field existed has none."""
    errors = getattr(state, "reload_errors", None)
    return errors if isinstance(errors, Mapping) else {}


def evaluate(
    state: State,
    limits: CheckConfig,
    now: dt.datetime,
    not_running: str | None = None,
    preferred_node: str = "",
    units: Units = Units(),
    notes: tuple[str, ...] = (),
) -> Verdict:
    """The verdict for ``state``. ``not_running`` says why the daemon is not running (None:
    it runs); ``preferred_node`` is the first configured database node; ``units`` what
    systemd said about dhcpd and the other watched units; ``notes`` facts an operator must
    keep in mind, appended to an OK text (no alert of their own)."""
    problems: list[tuple[int, str]] = []

    def add(level: int, text: str) -> None:
        if level != OK:
            problems.append((level, _clean(text)))

    if not_running is not None:
        add(CRITICAL, f"daemon not running: {not_running}")
    for level, text in _unit_problems(state, units, now):
        add(level, text)

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
        hint = "" if "confirm-shrink" in state.held_reason else " (provhad confirm-shrink)"
        add(CRITICAL, f"HELD: {state.held_reason}{hint}")
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
    for service, error in sorted(_reload_errors(state).items()):
        add(WARNING, f"{service} reload FAILED: {error}")

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
            f"omapi_hosts={state.omapi_hosts}c;;;0",
        ]
    )
    if problems:
        problems.sort(key=lambda p: -p[0])  # stable: the most severe first, else in order
        return Verdict(problems[0][0], "; ".join(text for _, text in problems), perfdata)
    gen = f"live gen {state.generation}" if state.generation is not None else "no live set"
    summary = f"{gen}, {_hosts(state)} hosts, {what}, db {state.db_node or '-'}"
    omapi_state = state.omapi
    if omapi_state:
        summary += f", omapi {omapi_state}"
        if state.omapi_fell_back:
            summary += f" (last update fell back: {state.omapi_fallback[26:]})"
    return Verdict(OK, "; ".join([_clean(summary), *notes]), perfdata)


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


def watched_units(cfg: Config) -> tuple[str | None, tuple[str, ...]]:
    """dhcpd's unit (None: not checked) and the other units to check, "auto" resolved."""
    c = cfg.check
    if c.dhcpd_unit == "auto":
        dhcpd = services.unit_of(cfg.dhcpd.restart_command)
    else:
        dhcpd = c.dhcpd_unit or None
    others: list[str] = []
    for unit in c.units:
        if unit == "auto":
            commands = (cfg.services.named_reload_command, cfg.services.chrony_reload_command)
            found = [services.unit_of(command) for command in commands]
            others += [u for u in found if u]
        elif unit:
            others.append(unit)
    return dhcpd, tuple(dict.fromkeys(u for u in others if u != dhcpd))


def ask_units(cfg: Config, timeout: float = SYSTEMCTL_TIMEOUT) -> Units:
    """What systemd says about the units :func:`watched_units` names."""
    dhcpd, others = watched_units(cfg)
    asked = ((dhcpd,) if dhcpd else ()) + others
    try:
        states = asyncio.run(services.unit_states(asked, timeout))
    except services.SystemdError as exc:
        return Units(error=str(exc), asked=asked)
    if dhcpd:
        return Units(states[0], tuple(states[1:]), asked=asked)
    return Units(None, tuple(states), asked=asked)


@dataclass(frozen=True)
class Report:
    """Everything ``provhad check`` and ``provhad status`` found."""

    verdict: Verdict
    state: State | None = None
    #: why the daemon is not running; None when it runs (or there is no state)
    not_running: str | None = None


def inspect(cfg: Config, now: dt.datetime | None = None) -> Report:
    """Read the state file, ask systemd, judge."""
    path = cfg.paths.under_root(cfg.paths.state_dir) / STATE_FILE
    try:
        state = load_state(path.parent)
    except FileNotFoundError:
        return Report(Verdict(UNKNOWN, f"no state file {path}: the daemon has never run"))
    except PermissionError:
        return Report(
            Verdict(
                UNKNOWN, f"cannot read {path}: permission denied (add this user to group provhad)"
            )
        )
    except (OSError, ValueError, TypeError) as exc:
        return Report(Verdict(UNKNOWN, _clean(f"cannot read {path}: {exc}")))
    why = not_running(state)
    verdict = evaluate(
        state,
        cfg.check,
        now or dt.datetime.now(dt.UTC),
        why,
        preferred_node(cfg),
        ask_units(cfg),
        notes(cfg),
    )
    return Report(verdict, state, why)


#: upstream runs kea-dhcp6 on both nodes without its HA hook (docs/files.md, DHCPv6)
V6_NOTE = "DHCPv6 has no failover: only the node the CMTS relays v6 to serves it"


def notes(cfg: Config) -> tuple[str, ...]:
    """What the OK text must remind of for this configuration."""
    return (V6_NOTE,) if cfg.render.dhcpv6 else ()


def status_code(report: Report) -> int:
    """``provhad status``'s exit status (see STATUS_OK and friends)."""
    if report.state is None:
        return STATUS_UNKNOWN
    if report.not_running is not None:
        return STATUS_STOPPED if report.state.status == "stopped" else STATUS_DEAD
    return STATUS_OK if report.verdict.code == OK else STATUS_PROBLEMS


def run(cfg: Config, now: dt.datetime | None = None) -> int:
    """Print the status line for the daemon configured by ``cfg``; return the exit status."""
    verdict = inspect(cfg, now).verdict
    print(verdict.line())
    return verdict.code


def thresholds(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` with the thresholds given on the command line (None: keep the file's)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, check=replace(cfg.check, **given)) if given else cfg
