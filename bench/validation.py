"""Validation times: ``.venv/bin/python -m bench.validation [--sizes N ...] [--repeats R]``.

Builds the sample network in a throwaway MariaDB (as bench/run.py does), renders it into a
temporary root and times, on the staged set as ``cycle.apply`` validates it:

- ``validate_full_s``: dhcpd's part of a full validation (``validate.run`` for dhcpd: the set
  without its host files, the host files in pieces, duplicates in Python);
- ``validate_host_change_s``: a host-only change (one modem's host line replaced) proven by
  ``cycle.hosts_only_check`` against the live set;
- ``validate_whole_s`` (with ``--whole``): one ``dhcpd -t`` over the whole set, for comparison.

Prints one JSON object with these keys (sizes as strings, the minimum of the repeats: the
machine is shared, the minimum is the least disturbed run) and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import network, write_config
from provhad import config, cycle, db, generations, model, validate
from provhad.plan import live_hashes, make_plan, stale_files
from provhad.render import DHCPD, INCLUDERS, RenderedFile, RenderedSet, Renderer

RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclasses.dataclass
class Rendered:
    """One rendered network and what re-renders its including files."""

    cfg: config.Config
    rendered: RenderedSet
    includers: Callable[[Callable[[str], str]], RenderedSet]


def render_network(work: Path, modems: int) -> Rendered:
    """The sample network of ``modems`` modems rendered for a root under ``work``."""
    with network(work, modems) as server:
        conf = work / "provhad.toml"
        write_config(conf, server, work / "root")
        cfg = config.load(conf)
        snap = asyncio.run(db.read_snapshot(cfg.database))
    m = model.build(snap, cfg.own_state)
    facts = cycle.gather_facts(cfg, snap)
    renderer = Renderer(cfg)
    return Rendered(
        cfg,
        renderer.render(m, facts),
        functools.partial(renderer.render, m, facts, only=INCLUDERS),
    )


#: CPU seconds of this process and its children per timed run, in order (the machine is
#: shared: CPU time shows the work whatever else runs, the wall time what it took here)
CPU: list[float] = []


def cpu_seconds() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(run: Callable[[], validate.Validation]) -> float:
    """Wall seconds of ``run`` (its CPU seconds go to :data:`CPU`); the set must pass."""
    t, c = time.perf_counter(), cpu_seconds()
    check = run()
    took = time.perf_counter() - t
    CPU.append(cpu_seconds() - c)
    if not check.ok:
        raise RuntimeError(f"the sample set was rejected: {check.problems[:3]}")
    return took


def staged_run(
    net: Rendered, rendered: RenderedSet, run: Callable[[generations.Staged], Any]
) -> Any:
    """``run`` over ``rendered`` staged against the live files (as cycle.apply stages it)."""
    todo = make_plan(rendered, live_hashes(rendered), stale_files(rendered))
    staged = generations.stage(todo, rendered)
    try:
        generations.write_checks(staged, net.includers)
        return run(staged)
    finally:
        generations.discard(staged)


def full_times(net: Rendered, repeats: int, pieces: validate.Pieces) -> list[float]:
    vcfg = net.cfg.validate
    return [
        staged_run(
            net,
            net.rendered,
            lambda s: timed(lambda: validate.run(s, vcfg, {DHCPD}, pieces)),
        )
        for _ in range(repeats)
    ]


def one_host_changed(rendered: RenderedSet, n: int) -> RenderedSet:
    """``rendered`` with the host line in the middle of modems-host.conf renamed (``-v<n>``)."""
    path = f"{rendered.dhcp_dir}/modems-host.conf"
    f = rendered.files[path]
    lines = f.data.split(b"\n")
    middle = len(lines) // 2
    name = lines[middle].split()[1]
    lines[middle] = lines[middle].replace(name, name + b"-v%d" % n)
    files = dict(rendered.files)
    files[path] = RenderedFile(path, b"\n".join(lines), f.mode, f.service, f.template)
    return dataclasses.replace(rendered, files=files)


def host_change_times(net: Rendered, repeats: int) -> list[float]:
    """Publishes the set, then times the check of one changed host, ``repeats`` times."""
    state_dir = net.cfg.paths.under_root(net.cfg.paths.state_dir)
    staged_run(net, net.rendered, lambda s: generations.swap(s, state_dir))
    vcfg = net.cfg.validate

    def check(staged: generations.Staged) -> validate.Validation:
        found = cycle.hosts_only_check(staged, vcfg)
        if found is None or found.checked[:1] != [cycle.HOSTS_ONLY]:
            raise RuntimeError("the changed host was not checked on its own")
        return found

    return [
        staged_run(net, one_host_changed(net.rendered, n), lambda s: timed(lambda: check(s)))
        for n in range(repeats)
    ]


def measure(sizes: list[int], repeats: int, whole: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"validate_full_s": {}, "validate_host_change_s": {}}
    if whole:
        out["validate_whole_s"] = {}
    details: dict[str, Any] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="provhad-bench-validation-") as tmp:
            net = render_network(Path(tmp), size)
            CPU.clear()
            full = full_times(net, repeats, validate.PIECES)
            full_cpu = list(CPU)
            change = host_change_times(net, repeats)
            out["validate_full_s"][str(size)] = round(min(full), 3)
            out["validate_host_change_s"][str(size)] = round(min(change), 3)
            details[str(size)] = {"full": full, "full_cpu": full_cpu, "host_change": change}
            if whole:
                out["validate_whole_s"][str(size)] = round(
                    min(full_times(net, 1, validate.Pieces(from_hosts=0))), 3
                )
    out["validation_details"] = {
        "runs": details,
        "piece_hosts": validate.PIECE_HOSTS,
        "pieces_from_hosts": validate.PIECES_FROM_HOSTS,
        "jobs": os.cpu_count(),
        "loadavg_after": list(os.getloadavg()),
    }
    return out


#: the keys of bench/results.json this module measures
RECORDED = ("validate_full_s", "validate_host_change_s")


def record(measured: dict[str, Any], path: Path = RESULTS) -> None:
    """Merge the sizes of ``measured``'s :data:`RECORDED` keys into ``path`` (the other keys
    and sizes stay as they are: other benchmarks write them)."""
    results = json.loads(path.read_text()) if path.exists() else {}
    for key in RECORDED:
        results.setdefault(key, {}).update(measured[key])
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole", action="store_true", help="also one whole dhcpd -t per size")
    parser.add_argument("--record", action="store_true", help=f"merge {RECORDED} into {RESULTS}")
    args = parser.parse_args(argv)
    measured = measure(args.sizes, args.repeats, args.whole)
    json.dump(measured, sys.stdout, indent=1)
    print()
    if args.record:
        record(measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
