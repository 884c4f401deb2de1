"""The benchmark: ``.venv/bin/python bench/run.py [--quick]``.

Builds the sample network at several sizes in a throwaway MariaDB (binlog on, as on a real
installation where Galera's wsrep_last_committed plays the same part), measures provhad and a
faithful emulation of upstream's per-minute slave rebuild on the same data in the same run, writes
``bench/results.json`` and regenerates ``docs/benchmarks.md`` (with ``docs/benchmarks.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provhad import config, db, sample
from provhad.testbed import MariaDB, Mosquitto, NotifyListener

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCHEMA = REPO / "tests" / "fixtures" / "schema.sql"
WATCHED_UPSTREAM = ("netgw", "ippool", "modem", "mta", "endpoint")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def write_config(path: Path, server: MariaDB, root: Path, extra: str = "") -> None:
    path.write_text(
        f'[database]\nhosts = ["127.0.0.1:{server.port}"]\nuser = "ro"\npassword = "ro"\n'
        f'name = "nms"\n\n[provha]\nown_state = "slave"\n\n[paths]\nroot = "{root}"\n\n'
        f'[render]\nfqdn = "nmsslave.nmsprime.test"\n{extra}'
    )


@contextmanager
def network(base: Path, modems: int) -> Iterator[MariaDB]:
    with MariaDB(base / "db", binlog=True) as server:
        server.create_database("nms", SCHEMA)
        server.create_readonly_user("nms", "ro", "ro")
        with server.admin("nms", local_infile=True) as conn:
            sample.load(conn, sample.SampleSpec(modems=modems))
        yield server


def child(conf: Path, mode: str = "provhad", *extra: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "rebuild_once.py"), str(conf), mode, *extra],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def time_dhcpd(conf: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, check=True)
    return time.perf_counter() - t


def quiesce(server: MariaDB, limit: float = 120.0) -> None:
    """Wait (bounded) until InnoDB has flushed what loading the sample left dirty: its
    background writes compete for the same cores and would bill the idle poll of a big
    network for work that has nothing to do with polling."""
    deadline = time.monotonic() + limit
    with server.admin() as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        while time.monotonic() < deadline:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            row = cur.fetchone()
            if row is None or int(row[1]) == 0:
                break
            time.sleep(0.5)  # a benchmark harness waiting for a server, not a test


async def poll_costs(cfgs: dict[str, config.DatabaseConfig], rounds: int) -> dict[str, list[float]]:
    """Seconds per idle provhad poll (nothing changed) at each size, measured round-robin so
    that the machine's drift (other load, InnoDB flushing) is shared by all sizes alike."""
    watchers = {n: db.Watcher(cfg) for n, cfg in cfgs.items()}
    for w in watchers.values():
        await w.changed()
    costs: dict[str, list[float]] = {n: [] for n in cfgs}
    for _ in range(rounds):
        for n, w in watchers.items():
            t = time.perf_counter()
            assert await w.changed() == []
            costs[n].append(time.perf_counter() - t)
    for w in watchers.values():
        w.close()
    return costs


async def busy_poll_costs(
    cfgs: dict[str, config.DatabaseConfig], servers: dict[str, MariaDB], rounds: int
) -> dict[str, list[float]]:
    """Seconds per provhad poll when something unrelated committed since the last one (a busy
    NMS Prime database): the commit position moved, so the watched columns are fingerprinted,
    and nothing relevant changed. Round-robin over the sizes like :func:`poll_costs`."""
    for server in servers.values():
        with server.admin() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS unrelated")
            cur.execute("CREATE TABLE IF NOT EXISTS unrelated.ticks (id SERIAL PRIMARY KEY)")
    watchers = {n: db.Watcher(cfg) for n, cfg in cfgs.items()}
    for w in watchers.values():
        await w.changed()
    costs: dict[str, list[float]] = {n: [] for n in cfgs}
    conns = {n: server.admin() for n, server in servers.items()}
    try:
        for _ in range(rounds):
            for n, w in watchers.items():
                with conns[n].cursor() as cur:
                    cur.execute("INSERT INTO unrelated.ticks VALUES ()")
                t = time.perf_counter()
                assert await w.changed() == []
                costs[n].append(time.perf_counter() - t)
    finally:
        for conn in conns.values():
            conn.close()
        for w in watchers.values():
            w.close()
    return costs


def upstream_poll_costs(servers: dict[str, MariaDB], rounds: int) -> dict[str, list[float]]:
    """Upstream's detection (the newest updated_at of provha and five tables) per run, at each
    size, round-robin like :func:`poll_costs`."""
    costs: dict[str, list[float]] = {n: [] for n in servers}
    conns = {n: server.admin("nms") for n, server in servers.items()}
    try:
        for _ in range(rounds):
            for n, conn in conns.items():
                with conn.cursor() as cur:
                    t = time.perf_counter()
                    cur.execute("SELECT * FROM provha ORDER BY id LIMIT 1")
                    cur.fetchall()
                    for table in WATCHED_UPSTREAM:
                        cur.execute(f"SELECT * FROM {table} ORDER BY updated_at DESC LIMIT 1")
                        cur.fetchall()
                    costs[n].append(time.perf_counter() - t)
    finally:
        for conn in conns.values():
            conn.close()
    return costs


def measure_size(base: Path, server: MariaDB, repeats: int) -> dict[str, Any]:
    """Rebuild phases, dhcpd's own parse time and peak RSS at one size."""
    root = base / "root"
    conf = base / "provhad.toml"
    write_config(conf, server, root, "\n[safety]\nmax_shrink_percent = 100\n")
    full = []
    for _ in range(repeats):
        shutil.rmtree(root, ignore_errors=True)
        full.append(child(conf))
    noop = child(conf)  # nothing changed since the last run
    # the daemon's case: one change, read incrementally (the live set is the last run's)
    runs = [child(conf, "change", str(server.socket)) for _ in range(repeats)]
    dhcpd_conf = root / "etc/dhcp-nmsprime/dhcpd.conf"
    parse = [time_dhcpd(dhcpd_conf) for _ in range(repeats)]
    up_root = base / "upstream"
    up_conf = base / "upstream.toml"
    shutil.copytree(root, up_root)
    write_config(up_conf, server, up_root)
    upstream = [child(up_conf, "upstream") for _ in range(repeats)]
    keys = ("snapshot_s", "model_s", "render_s", "write_s", "validate_s", "rebuild_s")
    result: dict[str, Any] = {k: spread([r[k] for r in runs]) for k in keys}
    result["full"] = {k: spread([r[k] for r in full]) for k in keys}
    result["chunks_read"] = runs[0]["chunks_read"]
    result["chunks"] = runs[0]["chunks"]
    result["change_bytes_written"] = runs[0]["bytes_written"]
    result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs + full)
    result["hosts"] = runs[0]["hosts"]
    result["dhcpd_parse_s"] = spread(parse)
    result["noop_bytes_written"] = noop["bytes_written"]
    result["upstream"] = {
        "rebuild_s": spread([u["rebuild_s"] + p for u, p in zip(upstream, parse, strict=False)]),
        "peak_rss_mb": None,
        "bytes_per_rebuild": upstream[0]["bytes_written"],
    }
    return result


# --- the daemon under load ---------------------------------------------------------------------


@contextmanager
def daemon(
    base: Path, server: MariaDB, extra: str
) -> Iterator[tuple[NotifyListener, Path, subprocess.Popen[bytes]]]:
    root = base / "droot"
    shutil.rmtree(root, ignore_errors=True)
    restarts = base / "restarts.log"
    restarts.unlink(missing_ok=True)
    script = base / "restart.sh"
    script.write_text(f"#!/bin/sh\necho $(date +%s.%N) >> {restarts}\n")
    script.chmod(0o755)
    conf = base / "daemon.toml"
    write_config(
        conf,
        server,
        root,
        extra + f'\n[dhcpd]\nrestart_command = ["{script}"]\n'
        'check_command = ["true"]\ncheck_attempts = 1\n'
        "\n[safety]\nmax_shrink_percent = 100\n",
    )
    sock = base / "notify.sock"
    sock.unlink(missing_ok=True)
    notify = NotifyListener(sock)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock))
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provhad.cli",
            "run",
            "--config",
            str(conf),
            "--log",
            "plain",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=REPO,
    )
    try:
        notify.wait(lambda m: m.get("READY") == "1")
        yield notify, restarts, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        notify.sock.close()


def insert_modem(server: MariaDB, n: int) -> None:
    with server.admin("nms") as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO modem (hostname, mac, contract_id) VALUES (%s, %s, 1)",
            (f"cm-bench{n}", f"02:be:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}:01"),
        )
        conn.commit()


def latency(
    base: Path, server: MariaDB, changes: int, poll_interval: float, mqtt: Mosquitto | None
) -> dict[str, float]:
    extra = (
        f"\n[watch]\npoll_interval = {poll_interval}\nquiet_period = 0.1\nmax_delay = 5\n"
        "min_restart_interval = 0\n"
    )
    if mqtt is not None:
        # polling slowed right down: the MQTT request is what makes it fast
        extra = extra.replace(f"poll_interval = {poll_interval}", "poll_interval = 30")
        extra += f'\n[mqtt]\nhost = "{mqtt.host}"\nport = {mqtt.port}\nreconnect_max = 1\n'
    live: list[float] = []
    restart: list[float] = []
    rng = random.Random(7)
    offset = 1000 if mqtt is None else 5000
    with daemon(base, server, extra) as (notify, restarts, proc):
        if mqtt is not None and "mqtt ok" not in notify.last_status:
            notify.wait(lambda m: "mqtt ok" in m.get("STATUS", ""))
        for i in range(changes):
            time.sleep(rng.uniform(0, poll_interval))  # changes land at random points of a poll
            gen = i + 2
            t0 = time.monotonic()
            wall0 = time.time()
            insert_modem(server, offset + i)
            if mqtt is not None:
                from provhad import mqtt as mq

                asyncio.run(mq.trigger(config.MqttConfig(host=mqtt.host, port=mqtt.port)))
            notify.wait(lambda m, g=gen: f"live gen {g}," in m.get("STATUS", ""), 120)  # type: ignore[misc]
            live.append(time.monotonic() - t0)
            last = float(restarts.read_text().split()[-1])
            restart.append(last - wall0)
        # no-op cycles: forced rebuilds with nothing changed
        before = len(restarts.read_text().split())
        manifest = base / "droot/var/lib/provhad/manifest.json"
        gen = json.loads(manifest.read_text())["generation"]
        for _ in range(5):
            proc.send_signal(signal.SIGHUP)
            notify.wait(lambda m: m.get("READY") == "1")
        noop_restarts = len(restarts.read_text().split()) - before
        noop_generations = json.loads(manifest.read_text())["generation"] - gen
    return {
        "p50": pct(live, 50),
        "p99": pct(live, 99),
        "max": max(live),
        "noop_cycles": 5,
        "noop_restarts": noop_restarts,
        "noop_generations": noop_generations,
        "restart_p50": pct(restart, 50),
        "restart_p99": pct(restart, 99),
        "restart_max": max(restart),
        "n": len(live),
    }


def burst(
    base: Path, server: MariaDB, changes: int, seconds: float, min_restart: float
) -> dict[str, Any]:
    extra = (
        f"\n[watch]\npoll_interval = 1\nquiet_period = 1\nmax_delay = 15\n"
        f"min_restart_interval = {min_restart}\n"
    )
    commits: list[float] = []
    with daemon(base, server, extra) as (notify, restarts, _proc):
        gens: list[tuple[float, int]] = []
        start = time.monotonic()
        for i in range(changes):
            target = start + seconds * i / changes
            time.sleep(max(0.0, target - time.monotonic()))
            insert_modem(server, 20000 + i)
            commits.append(time.time())
        t_last = time.monotonic()
        # the last change is live once a generation's status appears after it
        notify.wait(
            lambda m: (
                "live gen" in m.get("STATUS", "")
                and "restart pending" not in m.get("STATUS", "x")
                and _contains(base, f"cm-bench{20000 + changes - 1} ")
            ),
            timeout=300,
        )
        done = time.monotonic()
        gens.append((done, 0))
        manifest = json.loads((base / "droot/var/lib/provhad/manifest.json").read_text())
        restart_times = [float(x) for x in restarts.read_text().split()]
    publishes = manifest["generation"] - 1
    # upstream: a run every minute; each run that sees a change rewrites everything and
    # (through nmsprimed) restarts dhcpd
    minutes = {math.floor(t / 60) for t in commits}
    return {
        "burst_changes": changes,
        "burst_seconds": seconds,
        "publishes": publishes,
        "burst_restarts": len(restart_times) - 1,  # minus the startup restart
        "delay_last_change_s": done - t_last,
        "min_restart_interval_s": min_restart,
        "upstream": {
            "burst_restarts": len(minutes),
            "publishes": len(minutes),
            "delay_last_change_s": 60 - (commits[-1] % 60),
        },
    }


def _contains(base: Path, text: str) -> bool:
    try:
        return text in (base / "droot/etc/dhcp-nmsprime/modems-host.conf").read_text()
    except OSError:
        return False


def upstream_latency(rebuild_s: float, changes: int) -> dict[str, float]:
    """A per-minute cron: a change waits for the next minute, then a full rebuild runs."""
    rng = random.Random(7)
    waits = [60 - rng.uniform(0, 60) + rebuild_s for _ in range(changes)]
    return {"p50": pct(waits, 50), "p99": pct(waits, 99), "max": max(waits), "n": changes}


CHURN_KEYS = ("churn", "churn_settings", "validate_host_change_s", "validate_full_s")


def churn(quick: bool, sizes: list[int] | None, note: str | None = None) -> dict[str, Any]:
    """bench/churn.py in a child process (it needs root: network namespaces); its keys."""
    argv = [sys.executable, "-m", "bench.churn", *(["--quick"] if quick else [])]
    if sizes:
        argv += ["--sizes", *map(str, sizes)]
    if note:
        argv += ["--note", note]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def merge_churn(kept: dict[str, Any], new: dict[str, Any]) -> None:
    """Put a complete churn run's keys into ``kept``: its sizes replace the same sizes, other
    sizes stay (with the settings they ran with, under ``churn_settings_by_size``)."""
    by_size = kept.pop("churn_settings_by_size", {})
    for size in kept.get("churn", {}):
        by_size.setdefault(size, kept.get("churn_settings", {}))
    for size in new["churn"]:
        by_size[size] = new["churn_settings"]
    kept["churn"] = {**kept.get("churn", {}), **new["churn"]}
    kept["churn_settings"] = new["churn_settings"]
    kept["churn_settings_by_size"] = by_size
    kept.pop("churn_partial", None)  # superseded by a complete run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument(
        "--churn", action="store_true", help="also: slave availability under churn (root)"
    )
    parser.add_argument(
        "--churn-only",
        action="store_true",
        help="only the churn benchmark: its keys replace those in bench/results.json",
    )
    parser.add_argument("--churn-sizes", type=int, nargs="+", help="modems for the churn part")
    parser.add_argument("--churn-note", help="stored with the churn results (a loaded machine)")
    parser.add_argument(
        "--churn-from", type=Path, help="with --churn-only: a saved `python -m bench.churn` output"
    )
    args = parser.parse_args(argv)
    results_path = BENCH / "results.json"
    if args.churn_only:
        kept = json.loads(results_path.read_text()) if results_path.exists() else {}
        new = (
            json.loads(args.churn_from.read_text())
            if args.churn_from
            else churn(args.quick, args.churn_sizes, args.churn_note)
        )
        merge_churn(kept, new)
        results_path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
        subprocess.run([sys.executable, str(BENCH / "report.py")], check=True, cwd=REPO)
        return 0
    sizes = [10_000, 50_000] if args.quick else [10_000, 100_000, 500_000]
    repeats = 2 if args.quick else 3
    work = Path(tempfile.mkdtemp(prefix="provhad-bench-"))
    results: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "sizes": {},
    }
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[str, MariaDB] = {}
            for n in sizes:
                print(f"== {n} modems", flush=True)
                base = work / f"s{n}"
                servers[str(n)] = server = stack.enter_context(network(base, n))
                quiesce(server)  # the load's dirty pages must not bill the rebuilds
                results["sizes"][str(n)] = measure_size(base, server, repeats)
            print("== idle polls", flush=True)
            for server in servers.values():
                quiesce(server)
            cfgs = {k: config.load(work / f"s{k}" / "provhad.toml").database for k in servers}
            polls = asyncio.run(poll_costs(cfgs, 300))
            up_polls = upstream_poll_costs(servers, 30)
            busy = asyncio.run(busy_poll_costs(cfgs, servers, 20))
            for size in servers:
                results["sizes"][size]["poll_cost_s"] = spread(polls[size])
                results["sizes"][size]["upstream"]["poll_cost_s"] = spread(up_polls[size])
                results["sizes"][size]["busy_poll_cost_s"] = spread(busy[size])
        with network(work / "live", 10_000) as server, Mosquitto(work / "mqtt") as broker:
            changes = 20 if args.quick else 50
            print("== latency (poll)", flush=True)
            results["latency_poll"] = latency(work / "live", server, changes, 1.0, None)
            results["poll_interval_s"] = 1.0
            print("== latency (mqtt)", flush=True)
            results["latency_mqtt"] = latency(work / "live", server, changes, 1.0, broker)
            print("== burst", flush=True)
            n, secs = (200, 15.0) if args.quick else (1000, 60.0)
            results["burst"] = burst(work / "live", server, n, secs, 30.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flat = flatten(results)
    if args.churn:
        flat.update(churn(args.quick, args.churn_sizes, args.churn_note))
    elif results_path.exists():  # a run without the churn part keeps the last churn results
        last = json.loads(results_path.read_text())
        flat.update({k: last[k] for k in CHURN_KEYS if k in last})
    (BENCH / "results.json").write_text(json.dumps(flat, indent=1, sort_keys=True) + "\n")
    subprocess.run([sys.executable, str(BENCH / "report.py")], check=True, cwd=REPO)
    return 0


def flatten(r: dict[str, Any]) -> dict[str, Any]:
    """The exact keys of the results file (sizes as strings), plus the details."""
    sizes = r["sizes"]

    def per_size(key: str, field: str = "median", up: bool = False) -> dict[str, float]:
        out = {}
        for n, s in sizes.items():
            src = s["upstream"] if up else s
            v = src.get(key)
            out[n] = v[field] if isinstance(v, dict) else v
        return out

    burst_r = r["burst"]
    lp, lm = r["latency_poll"], r["latency_mqtt"]
    # latency runs on the smallest network: upstream's rebuild time at that size
    smallest = min(sizes, key=int)
    up_lat = upstream_latency(per_size("rebuild_s", up=True)[smallest], lp["n"])
    return {
        "rebuild_s": per_size("rebuild_s"),
        "rebuild_full_s": {n: s["full"]["rebuild_s"]["median"] for n, s in sizes.items()},
        "validate_s": per_size("validate_s"),
        "dhcpd_parse_s": per_size("dhcpd_parse_s"),
        "peak_rss_mb": per_size("peak_rss_mb"),
        "poll_cost_s": per_size("poll_cost_s"),
        "busy_poll_cost_s": per_size("busy_poll_cost_s"),
        "latency_poll_p99_s": lp["p99"],
        "latency_mqtt_p99_s": lm["p99"],
        "poll_interval_s": r["poll_interval_s"],
        "burst_changes": burst_r["burst_changes"],
        "burst_restarts": burst_r["burst_restarts"],
        "min_restart_interval_s": burst_r["min_restart_interval_s"],
        "noop_bytes_written": max(per_size("noop_bytes_written").values()),
        "noop_restarts": lp["noop_restarts"],
        "upstream": {
            "rebuild_s": per_size("rebuild_s", up=True),
            "poll_cost_s": per_size("poll_cost_s", up=True),
            "latency_poll_p99_s": up_lat["p99"],
            "poll_interval_s": 60.0,
            "burst_changes": burst_r["burst_changes"],
            "burst_restarts": burst_r["upstream"]["burst_restarts"],
            "noop_bytes_written": max(per_size("bytes_per_rebuild", "median", True).values()),
            "noop_restarts": 1,
        },
        "details": r,
    }


if __name__ == "__main__":
    raise SystemExit(main())
