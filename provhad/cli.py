"""The ``provhad`` command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from provhad import __version__, config, cycle, generations, plan

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_UNKNOWN = 3  # a monitoring plugin's "UNKNOWN": exit 2 would read as CRITICAL


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
        help="print the daemon's state file",
        description="Print the last state the "
        "daemon saved (after each cycle) for a person, or as JSON.",
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
            "critical age, a dhcpd restart failed, the shrink guard holds a set back, no "
            "database node answers ([check] db_down). WARNING: the warning age, a set held "
            "back or a failed cycle, a dhcpd restart pending, reading from a fallback database "
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
    for p in (render, run, status, confirm, trigger, check):
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
    path = cfg.paths.under_root(cfg.paths.state_dir) / "state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"provhad: no state file at {path}: the daemon has not run", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"provhad: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(data, indent=1, sort_keys=True))
        return EXIT_OK
    rows = [
        ("status", data.get("status")),
        ("pid", data.get("pid")),
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
        ("held back", data.get("held_reason") or "-"),
        ("counts", ", ".join(f"{k} {v}" for k, v in sorted(data.get("counts", {}).items()))),
        ("rejected rows", len(data.get("rejected", []))),
        ("missing configfiles", data.get("missing_configfiles")),
    ]
    for key, value in rows:
        print(f"{key + ':':<20} {value}")
    for line in data.get("rejected", [])[:50]:
        print(f"  {line}")
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
