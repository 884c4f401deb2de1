"""One rebuild in a fresh process, phase by phase: ``python bench/rebuild_once.py CONFIG``.

Prints one JSON object: seconds per phase, bytes written and this process's peak RSS. A child
process per measurement keeps the peak RSS honest (nothing left over from earlier sizes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import resource
import sys
import time

from provhad import config, cycle, db, model, publish
from provhad.render import INCLUDERS, Renderer


def main(path: str, mode: str = "provhad") -> dict[str, float]:
    cfg = config.load(path)
    facts = cycle.gather_facts(cfg)
    facts = type(facts)(dt.datetime.now(dt.UTC), "nmsslave.nmsprime.test", facts.omapi)
    out: dict[str, float] = {}
    t = time.perf_counter()
    snap = asyncio.run(db.read_snapshot(cfg.database))
    out["snapshot_s"] = time.perf_counter() - t
    t = time.perf_counter()
    m = model.build(snap, cfg.own_state)
    out["model_s"] = time.perf_counter() - t
    renderer = Renderer(cfg)
    t = time.perf_counter()
    rendered = renderer.render(m, facts)
    out["render_s"] = time.perf_counter() - t
    if mode == "upstream":
        # upstream rewrites every file in place on every rebuild, then runs dhcpd -t
        t = time.perf_counter()
        written = 0
        for f in rendered.files.values():
            with open(f.path, "wb") as fh:
                written += fh.write(f.data)
        out["write_s"] = time.perf_counter() - t
        out["bytes_written"] = written
    else:
        t = time.perf_counter()
        plan = publish.make_plan(
            rendered, publish.live_hashes(rendered), publish.stale_files(rendered)
        )
        staged = publish.stage(plan, rendered)
        stage_s = time.perf_counter() - t
        t = time.perf_counter()
        publish.write_checks(
            staged, lambda where: renderer.render(m, facts, locate=where, only=INCLUDERS)
        )
        check = publish.validate(staged, cfg.validate)
        out["validate_s"] = time.perf_counter() - t
        if not check.ok:
            raise SystemExit(f"validation failed: {check.problems}")
        t = time.perf_counter()
        state_dir = cfg.paths.under_root(cfg.paths.state_dir)
        if not plan.empty:
            publish.swap(staged, state_dir, cycle.set_counts(m))
        else:
            publish.discard(staged)
        out["write_s"] = stage_s + time.perf_counter() - t
        out["bytes_written"] = sum(len(f.data) for f in plan.write)
    out["rebuild_s"] = out["snapshot_s"] + out["model_s"] + out["render_s"] + out["write_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["hosts"] = len(m.modems) + len(m.mtas) + len(m.endpoints)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *(sys.argv[2:3]))))
