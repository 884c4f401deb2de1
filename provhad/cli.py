"""The ``provhad`` command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from provhad import __version__, config, cycle, generations, plan

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_UNKNOWN = 3  # a monitoring plugin's "UNKNOWN": exit 2 would read as CRITICAL
#: `provhad reload` waits this long by default: less than the unit's TimeoutStartSec= (300 s),
#: which systemd also applies to ExecReload=, so the operator reads our reason, not a kill
RELOAD_TIMEOUT = 240.0
#: how often `provhad reload` reads the state file while it waits
_RELOAD_POLL = 0.1


class _Parser(argparse.ArgumentParser):
    """argparse; a monitoring plugin's usage errors are UNKNOWN (a status line, exit 3)."""

    plugin = False

    def error(self, message: str) -> NoReturn:
        if self.plugin:
            print(f"PROVHAD UNKNOWN - usage: {message}")
            self.exit(EXIT_UNKNOWN)
        super().error(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds greater than 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="provhad",
        description=(
            "Keep the provisioning services (DHCP, TFTP, time, DNS) of an NMS Prime ProvHA "
            "node in step with the database."
        ),
    )
    parser.add_argument("--version", action="version", version=f"provhad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render = sub.add_parser(
        "render",
        help="build, validate and atomically publish the whole configuration set once",
        description=(
            "Read one consistent snapshot of the NMS Prime database, render the complete set "
            "(dhcpd, named key and DDNS script, chrony), validate it with the real daemons "
            "(dhcpd -t, named-checkconf, chronyd -p) and swap it in atomically. Prints a "
            "summary. Exit 0 on success, 1 when nothing could be published, 2 on a bad "
            "configuration."
        ),
    )
    run = sub.add_parser(
        "run",
        help="the daemon: rebuild on every relevant database change, MQTT request and SIGHUP",
        description=(
            "Run as a systemd Type=notify service: poll the database for changes (commit "
            "position, then fingerprints of the watched tables), rebuild periodically every "
            "provha.slave_config_rebuild_interval seconds, on MQTT requests, on SIGHUP (which "
            "also re-reads the config file) and at UTC-offset changes; publish like 'render' "
            "and restart dhcpd only when its files changed, rolling back if it does not come "
            "up. SIGTERM stops after the cycle in progress."
        ),
    )
    run.add_argument(
        "--log",
        choices=["auto", "journal", "console", "plain"],
        default="auto",
        help="where logs go: auto = the journal under systemd, console on a terminal, else plain",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    status = sub.add_parser(
        "status",
        help="print the daemon's state file and health; exit 0 running and healthy",
        description=(
            "Print the last state the daemon saved (after each cycle) for a person, or as "
            "JSON, with the health 'provhad check' reports. Exit status as for an LSB "
            "'status' action: 0 running and healthy, 1 dead although the state file says it "
            "runs (crashed or killed), 3 not running (stopped), 4 unknown (no readable state "
            "file), 150 running with problems (check says WARNING or CRITICAL)."
        ),
    )
    status.add_argument("--json", action="store_true", help="print the state file as JSON")
    confirm = sub.add_parser(
        "confirm-shrink",
        help="let the set through that the shrink guard holds back now (one shot, expires)",
        description=(
            "The shrink guard holds back a set with more than [safety] max_shrink_percent "
            "and more than max_shrink_hosts (max_shrink_pools) fewer hosts (pools) than the "
            "live one (an empty or half-read database must not empty dhcpd). After checking "
            "that the removal is intended, confirm it: exactly the held set (by its hash) may "
            "then go live, until the confirmation expires; the daemon publishes it on its next "
            "cycle (send SIGHUP to make it now). Exit 1 when nothing is held."
        ),
    )
    confirm.add_argument(
        "--ttl",
        type=_seconds,
        metavar="SECONDS",
        default=plan.CONFIRM_TTL,
        help=f"how long the confirmation stays valid (default {plan.CONFIRM_TTL:g})",
    )
    reload = sub.add_parser(
        "reload",
        help="make the daemon re-read its configuration and rebuild, and wait until it has",
        description=(
            "Send SIGHUP to the daemon and wait until it has re-read its configuration and run "
            "the cycle that follows (the state file's reload_started_usec/reload_finished_usec "
            "show a reload that began after the signal). The unit's ExecReload= runs it, so "
            "'systemctl reload provhad' returns only then, also on systemd < 253 (no "
            "Type=notify-reload). Exit 0 reloaded, 1 not running, refused (bad configuration: "
            "the old one stays), or not done within --timeout."
        ),
    )
    reload.add_argument(
        "--pid",
        type=int,
        metavar="PID",
        help="the daemon's pid (ExecReload=: $MAINPID); default: the one in the state file",
    )
    reload.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=RELOAD_TIMEOUT,
        help=f"how long to wait for the reload (default {RELOAD_TIMEOUT:g})",
    )
    trigger = sub.add_parser(
        "trigger",
        help="ask the daemons listening on the MQTT trigger topic to rebuild now",
        description="Publish a rebuild request on [mqtt] trigger_topic (for the master's side).",
    )
    trigger.add_argument("--reason", default="", help="free text carried in the request")
    check = sub.add_parser(
        "check",
        help="monitoring plugin for Nagios/Icinga: one status line, exit 0/1/2/3",
        description=(
            "Read the daemon's state file and print one line 'PROVHAD OK|WARNING|CRITICAL|"
            "UNKNOWN - text | perfdata'; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. "
            "CRITICAL: the daemon is not running, the last successful cycle is older than the "
            "critical age, a dhcpd restart failed, dhcpd's unit is not active ([check] "
            "dhcpd_unit), the shrink guard holds a set back, no database node answers ([check] "
            "db_down). WARNING: the warning age, a set held back or a failed cycle, a dhcpd "
            "restart pending, dhcpd active since before provhad's last restart, another "
            "watched unit not active ([check] units: named, chrony, TFTP), a failed "
            "named/chrony reload, systemd not answering, reading from a fallback database "
            "node ([check] db_fallback), rejected rows, missing TFTP configfiles. UNKNOWN: no "
            "readable state file or a bad configuration. Thresholds come from [check]; the "
            "options override them. Count thresholds alert at that many or more; 0 is off."
        ),
    )
    check.plugin = True
    check.add_argument(
        "-w",
        "--warning",
        type=_seconds,
        metavar="SECONDS",
        dest="age_warning",
        help="age of the last successful cycle that is WARNING ([check] age_warning)",
    )
    check.add_argument(
        "-c",
        "--critical",
        type=_seconds,
        metavar="SECONDS",
        dest="age_critical",
        help="age of the last successful cycle that is CRITICAL ([check] age_critical)",
    )
    for what, key in (("rejected rows", "rejected"), ("missing TFTP configfiles", "missing")):
        name = "missing_configfiles" if key == "missing" else key
        for level in ("warning", "critical"):
            check.add_argument(
                f"--{key}-{level}",
                type=_count,
                metavar="N",
                dest=f"{name}_{level}",
                help=f"{what} that are {level.upper()} ([check] {name}_{level})",
            )
    strip = sub.add_parser(
        "strip-hosts",
        help="remove the host records from dhcpd's lease files (dhcpd stopped; ExecStartPre)",
        description="See provhad.leases: every dhcpd start must begin without host records.",
    )
    strip.add_argument("leasefile", nargs="+")
    for p in (render, run, status, confirm, reload, trigger, check):
        p.add_argument(
            "--config", metavar="FILE", help="provhad TOML file (default: NMS Prime's env files)"
        )
        p.add_argument(
            "--root",
            metavar="DIR",
            help="read and write everything as if DIR were / (overrides [paths] root)",
        )
    return parser


def _status(cfg: config.Config, as_json: bool) -> int:
    """The state file for a person (or as JSON), the health ``provhad check`` sees, and an
    LSB-style exit status (check.STATUS_*)."""
    from provhad import check

    path = cfg.paths.under_root(cfg.paths.state_dir) / "state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"provhad: no state file at {path}: the daemon has not run", file=sys.stderr)
        return check.STATUS_UNKNOWN
    except (OSError, ValueError) as exc:
        print(f"provhad: cannot read {path}: {exc}", file=sys.stderr)
        return check.STATUS_UNKNOWN
    report = check.inspect(cfg)
    code = check.status_code(report)
    if as_json:
        print(json.dumps(data, indent=1, sort_keys=True))
        return code
    running = "not running: " + report.not_running if report.not_running else "running"
    rows = [
        ("daemon", f"{running} (pid {data.get('pid')})"),
        ("health", report.verdict.line().removeprefix("PROVHAD ").split(" | ")[0]),
        ("status", data.get("status")),
        ("live generation", data.get("generation")),
        (
            "last cycle",
            f"{data.get('last_cycle_at')} ({data.get('last_trigger')}, "
            f"{'ok' if data.get('last_cycle_ok') else 'FAILED'}, "
            f"{data.get('last_duration_ms')} ms)",
        ),
        ("last success", data.get("last_success_at")),
        ("last error", data.get("last_error") or "-"),
        (
            "database",
            "ok " + str(data.get("db_node"))
            if data.get("db_ok")
            else f"DOWN: {data.get('db_error')}",
        ),
        ("mqtt", data.get("mqtt")),
        (
            "dhcpd",
            f"runs gen {data.get('dhcpd_running_generation')} "
            f"(last start {data.get('dhcpd_restart_s')} s)"
            + (", restart PENDING" if data.get("restart_pending") else "")
            + (
                ""
                if data.get("dhcpd_last_restart_ok", True)
                else f", last restart FAILED: {data.get('dhcpd_error')}"
            ),
        ),
        (
            "omapi",
            f"{data.get('omapi') or '-'}; {data.get('omapi_hosts', 0)} host steps live since "
            f"start; last {data.get('omapi_last') or '-'}; "
            f"last fallback {data.get('omapi_fallback') or '-'}",
        ),
        ("held back", data.get("held_reason") or "-"),
        (
            "reloads failed",
            "; ".join(f"{k}: {v}" for k, v in sorted(data.get("reload_errors", {}).items())) or "-",
        ),
        ("counts", ", ".join(f"{k} {v}" for k, v in sorted(data.get("counts", {}).items()))),
        ("rejected rows", len(data.get("rejected", []))),
        ("missing configfiles", data.get("missing_configfiles")),
    ]
    for key, value in rows:
        print(f"{key + ':':<20} {value}")
    for line in data.get("rejected", [])[:50]:
        print(f"  {line}")
    return code


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    return True


def _reloaded(data: dict[str, Any], since_usec: int) -> bool:
    """The state file shows a reload that began at or after ``since_usec`` and has ended."""
    started, finished = data.get("reload_started_usec"), data.get("reload_finished_usec")
    if not isinstance(started, int) or not isinstance(finished, int):
        return False
    return started >= since_usec and finished >= started


def _reload(cfg: config.Config, pid: int | None, timeout: float) -> int:
    """SIGHUP, then wait until the daemon has reloaded (see the command's description)."""
    from provhad import check
    from provhad.notify import monotonic_usec
    from provhad.state import STATE_FILE, State

    path = cfg.paths.under_root(cfg.paths.state_dir) / STATE_FILE
    try:
        data = _read_json(path)
    except (OSError, ValueError) as exc:
        print(f"provhad: cannot read {path}: {exc}; is the daemon running?", file=sys.stderr)
        return EXIT_FAILED
    if pid is None:
        why = check.not_running(State.parse(data))
        if why is not None:
            print(f"provhad: the daemon is not running: {why}", file=sys.stderr)
            return EXIT_FAILED
        pid = int(data["pid"])
    # the reload must begin after the signal: the daemon stamps it on the same clock
    since = monotonic_usec()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"provhad: cannot signal pid {pid}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if "reload_finished_usec" not in data:
        print(f"sent SIGHUP to pid {pid}; this daemon does not report when it has reloaded")
        return EXIT_OK
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = _read_json(path)
        except (OSError, ValueError):
            pass  # replaced by rename: a read sees the old or the new file; retry anyway
        else:
            if _reloaded(data, since):
                break
        if not _alive(pid):
            print(f"provhad: the daemon (pid {pid}) ended during the reload", file=sys.stderr)
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            print(
                f"provhad: the daemon (pid {pid}) has not finished the reload within "
                f"{timeout:g} s; it goes on by itself (provhad status)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        time.sleep(_RELOAD_POLL)  # the state file is replaced whole; no change event to wait on
    error = data.get("reload_error")
    if error:
        print(f"provhad: reload refused, the old configuration stays: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"reloaded: {data.get('status')}")
    return EXIT_OK


def _render(cfg: config.Config) -> int:
    """The cycle once, unless another provhad (the daemon) publishes into the same state."""
    state_dir = cfg.paths.under_root(cfg.paths.state_dir)
    try:
        with generations.WriterLock(state_dir):
            result = asyncio.run(cycle.render_once(cfg))
    except generations.Busy as exc:
        holder = f"provhad run (pid {exc.pid})" if exc.pid else "another provhad"
        print(
            f"provhad: {holder} owns {state_dir}; it publishes by itself: use `provhad "
            "trigger` or `systemctl reload provhad`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except generations.PublishError as exc:
        print(f"provhad: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(cycle.summary(result))
    return EXIT_OK if result.ok else EXIT_FAILED


def _confirm_shrink(cfg: config.Config, ttl: float, now: dt.datetime) -> int:
    state_dir = cfg.paths.under_root(cfg.paths.state_dir)
    held = plan.ShrinkHold.load(state_dir)
    if held is None:
        print(
            f"provhad: the shrink guard holds nothing back (no {state_dir / plan.SHRINK_HELD}); "
            "nothing to confirm",
            file=sys.stderr,
        )
        return EXIT_FAILED
    expires = now + dt.timedelta(seconds=ttl)
    try:
        plan.Confirmation(held.set_hash, expires).store(state_dir)
    except OSError as exc:
        print(f"provhad: cannot write the confirmation: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"confirmed set {held.set_hash[:12]} (held since {held.at}: {held.reason}) until "
        f"{expires.isoformat(timespec='seconds')}; the daemon publishes it on its next cycle"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "strip-hosts":  # before the config: dhcpd's start must not depend on it
        from provhad import leases

        return leases.main(args.leasefile)
    try:
        cfg = config.load(args.config, root=args.root)
    except config.ConfigError as exc:
        if args.command == "check":
            print(f"PROVHAD UNKNOWN - configuration error: {exc}")
            return EXIT_UNKNOWN
        print(f"provhad: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "render":
        return _render(cfg)
    if args.command == "run":
        from provhad import daemon

        return daemon.run(args.config, args.root, log_target=args.log, log_level=args.log_level)
    if args.command == "status":
        return _status(cfg, args.json)
    if args.command == "reload":
        return _reload(cfg, args.pid, args.timeout)
    if args.command == "confirm-shrink":
        return _confirm_shrink(cfg, args.ttl, dt.datetime.now(dt.UTC))
    if args.command == "check":
        from provhad import check

        limits = {
            f"{name}_{level}": getattr(args, f"{name}_{level}")
            for name in ("age", "rejected", "missing_configfiles")
            for level in ("warning", "critical")
        }
        return check.run(check.thresholds(cfg, limits))
    if args.command == "trigger":
        from provhad import mqtt

        if not cfg.mqtt.host:
            print("provhad: [mqtt] host is not set", file=sys.stderr)
            return EXIT_CONFIG
        try:
            asyncio.run(mqtt.trigger(cfg.mqtt, args.reason))
        except mqtt.MqttTriggerError as exc:
            print(f"provhad: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"rebuild requested on {cfg.mqtt.trigger_topic}")
        return EXIT_OK
    return EXIT_FAILED  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
