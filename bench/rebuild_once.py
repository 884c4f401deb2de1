"""One rebuild in a fresh process, phase by phase: ``python bench/rebuild_once.py CONFIG [MODE]``.

MODE ``provhad`` (default): a full read, as at startup, SIGHUP and the periodic rebuild.
``change SOCKET``: what the daemon does for a change: a full read fills the row cache, the
modelled chunks, the rendered slices and the live files' digests (not timed, as the daemon's
cycle before), a modem is changed through the server's admin SOCKET, and the rebuild after it
reads, models and renders incrementally.
``upstream``: upstream's full rewrite in place.

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

import pymysql

from provhad import config, cycle, db, generations, model, validate
from provhad.plan import LIVE, live_hashes, make_plan, stale_files
from provhad.render import INCLUDERS, Renderer


def change_one_modem(socket: str) -> None:
    """What the master does: one modem (in the middle of the id range) gets another MAC (a
    host-only change: one line of modems-host.conf)."""
    with (
        pymysql.connect(unix_socket=socket, user="root", database="nms", autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT (MIN(id) + MAX(id)) DIV 2 FROM modem")
        row = cur.fetchone()
        assert row is not None
        cur.execute(
            "UPDATE modem SET mac = CONCAT('02:', SUBSTRING(MD5(RAND()), 1, 2), ':',"
            " SUBSTRING(mac, 7)) WHERE id = (SELECT MIN(id) FROM modem WHERE id >= %s"
            " AND deleted_at IS NULL AND public = 0 AND internet_access = 1"
            " AND mac LIKE '__:__:__:__:__:__')",
            (row[0],),
        )
        assert cur.rowcount == 1


def main(path: str, mode: str = "provhad", socket: str = "") -> dict[str, float]:
    cfg = config.load(path)
    facts = cycle.gather_facts(cfg)
    facts = type(facts)(dt.datetime.now(dt.UTC), "nmsslave.nmsprime.test", facts.omapi)
    out: dict[str, float] = {}
    cache = None
    parts = None
    renderer = Renderer(cfg)
    if mode == "change":
        cache = db.RowCache()
        parts = cycle.PARTS
        renderer = Renderer(cfg, slices=cycle.SLICES)
        snap = asyncio.run(db.read_snapshot(cfg.database, cache))
        warm = renderer.render(model.build(snap, cfg.own_state, parts=parts), facts)
        del snap
        live_hashes(warm, LIVE)
        del warm
        change_one_modem(socket)
    t = time.perf_counter()
    snap = asyncio.run(db.read_snapshot(cfg.database, cache, full=cache is None))
    out["snapshot_s"] = time.perf_counter() - t
    if cache is not None:
        out["chunks_read"] = sum(n for n, _ in cache.last_read.values())
        out["chunks"] = sum(total for _, total in cache.last_read.values())
    t = time.perf_counter()
    m = model.build(snap, cfg.own_state, parts=parts)
    out["model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rendered = renderer.render(m, facts)
    out["render_s"] = time.perf_counter() - t
    out["slices_rendered"], out["slices"] = cycle.SLICES.last if mode == "change" else (0, 0)
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
        cycle.set_hash(rendered)
        plan = make_plan(rendered, live_hashes(rendered, LIVE), stale_files(rendered))
        out["plan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        staged = generations.stage(plan, rendered)
        stage_s = time.perf_counter() - t
        t = time.perf_counter()
        generations.write_checks(
            staged, lambda where: renderer.render(m, facts, locate=where, only=INCLUDERS)
        )
        # as the daemon's cycle: a host-only change is checked on its own (cycle.hosts_only_check)
        check = (mode == "change" and cycle.hosts_only_check(staged, cfg.validate)) or (
            validate.run(staged, cfg.validate)
        )
        out["validate_s"] = time.perf_counter() - t
        if not check.ok:
            raise SystemExit(f"validation failed: {check.problems}")
        t = time.perf_counter()
        state_dir = cfg.paths.under_root(cfg.paths.state_dir)
        if not plan.empty:
            generations.swap(staged, state_dir, cycle.set_counts(m))
        else:
            generations.discard(staged)
        out["write_s"] = stage_s + time.perf_counter() - t
        out["bytes_written"] = sum(len(f.data) for f in plan.write)
    phases = ("snapshot_s", "model_s", "render_s", "plan_s", "write_s")
    out["rebuild_s"] = sum(out.get(k, 0.0) for k in phases)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["hosts"] = len(m.modems) + len(m.mtas) + len(m.endpoints)
    return out


if __name__ == "__main__":
    with cycle.quiet_gc():  # as the daemon and `provhad render` run a rebuild
        print(json.dumps(main(sys.argv[1], *(sys.argv[2:4]))))
