"""The ``provhad`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from provhad import __version__, config, cycle

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    render.add_argument(
        "--config", metavar="FILE", help="provhad TOML file (default: NMS Prime's env files only)"
    )
    render.add_argument(
        "--root",
        metavar="DIR",
        help="write (and read) everything as if DIR were / (overrides [paths] root)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config, root=args.root)
    except config.ConfigError as exc:
        print(f"provhad: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "render":
        result = asyncio.run(cycle.render_once(cfg))
        print(cycle.summary(result))
        return EXIT_OK if result.ok else EXIT_FAILED
    return EXIT_FAILED  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
