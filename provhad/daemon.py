"""``provhad run``: the long-running rebuild daemon.

Shaped like uvicorn's Config + Server: :class:`Daemon` owns startup, the main loop, signal
handling and shutdown. Triggers (database poll, the periodic rebuild, MQTT, SIGHUP, the next
UTC-offset change) only put :class:`Trigger` objects into a queue; the main loop debounces them
and runs one cycle (``cycle.apply``) at a time, then restarts or reloads what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import time
import zoneinfo
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provhad import config, cycle, db, generations, log, services
from provhad.facts import ConfStamp
from provhad.notify import Notifier, Watchdog, watchdog_interval
from provhad.render import CHRONY, DHCPD, NAMED
from provhad.tasks import cancel_and_wait

STATE_FILE = "state.json"
#: Triggers whose cycle reads every row again rather than only the changed chunks.
FULL_READ = frozenset({"startup", "periodic", "sighup", "retry"})
#: Seconds the helper tasks get to stop (the MQTT link says "offline" and disconnects).
STOP_GRACE = 15.0


@dataclass(frozen=True)
class Trigger:
    """Why a rebuild is wanted."""

    kind: str  # startup, poll, periodic, mqtt, sighup, dst, retry
    detail: str = ""


@dataclass
class State:
    """What the daemon knows; saved as JSON after every cycle (``provhad status`` reads it)."""

    pid: int = 0
    node: str = ""
    started_at: str = ""
    status: str = "starting"
    last_cycle_at: str = ""
    last_cycle_ok: bool = False
    last_success_at: str = ""
    last_trigger: str = ""
    last_duration_ms: float = 0.0
    last_error: str = ""
    generation: int | None = None
    db_ok: bool = False
    db_node: str = ""
    db_error: str = ""
    mqtt: str = "off"
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    missing_configfiles: int = 0
    #: dhcpd: the generation whose files are live vs the one dhcpd was last restarted with
    dhcpd_applied: int | None = None
    dhcpd_restarted: int | None = None
    dhcpd_last_restart_at: str = ""
    dhcpd_last_restart_ok: bool = True
    dhcpd_error: str = ""
    dhcpd_applied_set: str = ""
    held_set: str = ""
    held_reason: str = ""
    rollbacks: int = 0

    @property
    def restart_pending(self) -> bool:
        return self.dhcpd_applied != self.dhcpd_restarted

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATE_FILE}.tmp"
        data = asdict(self) | {"restart_pending": self.restart_pending}
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, state_dir / STATE_FILE)

    @staticmethod
    def load(state_dir: Path) -> State:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return State()
        known = {f for f in State.__dataclass_fields__}
        return State(**{k: v for k, v in data.items() if k in known})


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def next_offset_change(
    timezone: str, after: dt.datetime, horizon_days: int = 400
) -> dt.datetime | None:
    """The next instant (a whole second) at which the UTC offset of ``timezone`` changes."""
    tz = zoneinfo.ZoneInfo(timezone)
    base = int(after.timestamp())

    def offset(ts: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone(tz).utcoffset()

    start = offset(base)
    lo = base
    for day in range(1, horizon_days + 1):
        hi = base + day * 86400
        if offset(hi) != start:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == start else (lo, mid)
            return dt.datetime.fromtimestamp(hi, dt.UTC)
        lo = hi
    return None


def poll_pause(interval: float, spent: float, share: float) -> float:
    """Seconds to wait after a poll that took ``spent``: ``interval``, stretched so that polls
    keep the database busy for at most ``share`` of the time. On a database that commits
    all the time every poll fingerprints the watched columns, which at 500k modems takes a
    few hundred milliseconds of the server's time."""
    return max(interval, spent * (1 - share) / share)


class Daemon:
    """The service: one instance per process."""

    def __init__(self, config_path: str | None, root: str | None = None) -> None:
        self.config_path = config_path
        self.root = root
        self.cfg = config.load(config_path, root=root)
        self.state_dir = self.cfg.paths.under_root(self.cfg.paths.state_dir)
        self.node = socket.gethostname()
        self.log = log.get()
        self.notifier = Notifier()
        self.triggers: asyncio.Queue[Trigger] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.state = State.load(self.state_dir)
        self.watcher = db.Watcher(self.cfg.database)
        # the big tables of the last snapshot: a change re-reads only the chunks it touched
        self.rows = db.RowCache()
        # what the TFTP cm/*.conf files say, by file stamp (read again when they change)
        self.tftp: dict[str, tuple[ConfStamp, bool]] = {}
        self.watchdog: Watchdog | None = None
        self.mqtt: Any = None
        self.restart_due: float | None = None
        self.periodic_due: float | None = None
        #: provha.slave_config_rebuild_interval as last read (upstream's default until then)
        self.rebuild_interval = 3600
        self.dst_due: float | None = None
        self.last_restart: float | None = None
        self.tasks: list[asyncio.Task[None]] = []

    # --- reporting -------------------------------------------------------------------------

    def status_line(self) -> str:
        s = self.state
        gen = f"live gen {s.generation}" if s.generation is not None else "no live set"
        hosts = s.counts.get("modems", 0) + s.counts.get("mtas", 0) + s.counts.get("endpoints", 0)
        db_part = f"db {s.db_node or '-'} ok" if s.db_ok else f"db DOWN ({s.db_error[:80]})"
        parts = [gen, f"{hosts} hosts", f"{len(s.rejected)} rejected", db_part, f"mqtt {s.mqtt}"]
        if s.last_success_at:
            parts.insert(1, f"ok {s.last_success_at[11:19]}")
        if s.restart_pending:
            parts.append("dhcpd restart pending")
        if not s.dhcpd_last_restart_ok:
            parts.append(f"dhcpd restart FAILED ({s.dhcpd_error[:60]})")
        if s.held_reason:
            parts.append(f"HELD: {s.held_reason[:80]}")
        return ", ".join(parts)

    def mqtt_state(self) -> str:
        if self.mqtt is None:
            return "off"
        return "ok" if self.mqtt.connected else f"down ({self.mqtt.last_error[:40]})"

    def report(self) -> None:
        self.state.mqtt = self.mqtt_state()
        self.state.status = self.status_line()
        # the state file first: whoever reacts to STATUS may read it
        with contextlib.suppress(OSError):
            self.state.save(self.state_dir)
        self.notifier.status(self.state.status)
        if self.mqtt is not None:
            self.mqtt.publish_status({"state": "online", "node": self.node, **asdict(self.state)})

    def beat(self) -> None:
        if self.watchdog is not None:
            self.watchdog.beat()

    # --- triggers --------------------------------------------------------------------------

    def want(self, kind: str, detail: str = "") -> None:
        self.triggers.put_nowait(Trigger(kind, detail))

    async def poll(self) -> None:
        """Poll the database for changes; never ends because the database is gone."""
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                changed = await self.watcher.changed()
                if not self.state.db_ok:
                    self.log.info("db_up", node=self.watcher.node)
                    if self.state.last_cycle_ok is False or changed:
                        self.want("retry", "database back")
                self.state.db_ok, self.state.db_node, self.state.db_error = (
                    True,
                    self.watcher.node,
                    "",
                )
                if changed:
                    self.want("poll", ",".join(changed))
            except db.DatabaseError as exc:
                if self.state.db_ok or not self.state.db_error:
                    self.log.warning("db_down", error=str(exc))
                    self.state.db_ok, self.state.db_error = False, str(exc)
                    self.report()
            w = self.cfg.watch
            pause = poll_pause(w.poll_interval, time.monotonic() - started, w.max_poll_share)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), pause)

    def on_sighup(self) -> None:
        self.want("sighup")

    def on_stop(self, signame: str) -> None:
        self.log.info("stop_requested", signal=signame)
        self.stop.set()

    # --- the cycle -------------------------------------------------------------------------

    async def collect(self) -> list[Trigger]:
        """Wait for a trigger (or a timer), then debounce: a quiet period, at most max_delay."""
        first = await self.next_trigger()
        if first is None:
            return []
        batch = [first]
        w = self.cfg.watch
        begun = time.monotonic()
        while not self.stop.is_set():
            remaining = w.max_delay - (time.monotonic() - begun)
            if remaining <= 0:
                break
            try:
                batch.append(
                    await asyncio.wait_for(self.triggers.get(), min(w.quiet_period, remaining))
                )
            except TimeoutError:
                break
        return batch

    def _timers(self) -> dict[str, float]:
        """The armed timers (kind -> monotonic deadline)."""
        timers = {"restart": self.restart_due, "periodic": self.periodic_due, "dst": self.dst_due}
        return {k: v for k, v in timers.items() if v is not None}

    def _disarm(self, kind: str) -> None:
        setattr(self, f"{kind}_due", None)

    async def next_trigger(self) -> Trigger | None:
        while not self.stop.is_set():
            self.beat()  # the idle loop is alive: it woke up
            if self.mqtt is not None and self.mqtt_state() != self.state.mqtt:
                self.report()  # the broker came or went between cycles
            due = self._timers()
            # wake up well within stall_timeout even when idle, so the watchdog sees a live loop
            timeout = self.cfg.watch.stall_timeout / 3
            kind, at = "", 0.0
            if due:
                kind, at = min(due.items(), key=lambda kv: kv[1])
                timeout = min(timeout, max(0.0, at - time.monotonic()))
            getter = asyncio.ensure_future(self.triggers.get())
            stopper = asyncio.ensure_future(self.stop.wait())
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in (getter, stopper):
                if fut not in done:
                    fut.cancel()
            if getter in done:
                return getter.result()
            if stopper in done:
                return None
            if due and time.monotonic() >= at:
                self._disarm(kind)
                return Trigger(kind)
        return None

    async def run_cycle(self, triggers: list[Trigger]) -> cycle.Result | None:
        with cycle.quiet_gc():
            return await self._run_cycle(triggers)

    async def _run_cycle(self, triggers: list[Trigger]) -> cycle.Result | None:
        kinds = sorted({t.kind for t in triggers})
        trigger = ",".join(kinds)
        started = time.monotonic()
        self.state.last_trigger = trigger
        if kinds == ["restart"]:
            await self.restart_if_due()
            return None
        # the reconciliations read everything; a change (poll, MQTT) only what it touched
        full = not FULL_READ.isdisjoint(kinds)
        try:
            snap = await db.read_snapshot(self.cfg.database, self.rows, full=full)
        except db.DatabaseError as exc:
            self.state.db_ok, self.state.db_error = False, str(exc)
            self.state.last_cycle_ok, self.state.last_error = False, str(exc)
            self.state.last_cycle_at = now_iso()
            self.log.warning("cycle_skipped", trigger=trigger, error=str(exc))
            return None
        self.state.db_ok, self.state.db_node, self.state.db_error = True, snap.node, ""
        if full:
            self.tftp.clear()  # the reconciliation trusts no cache
        facts = cycle.gather_facts(self.cfg, snap, self.tftp)
        self.beat()
        try:
            result = await asyncio.to_thread(
                cycle.apply, self.cfg, snap, facts, self.beat, self.state.held_set
            )
        except generations.PublishError as exc:
            result = cycle.Result(node=snap.node, error=str(exc))
        duration = (time.monotonic() - started) * 1000
        self.record(result, trigger, duration)
        if result.model is not None:
            # read live from provha each cycle: a change applies without restarting provhad
            self.rebuild_interval = max(1, result.model.ha.rebuild_interval)
        # re-armed after every cycle, failed ones too: the reconciliation must not stop
        self.periodic_due = time.monotonic() + self.rebuild_interval
        if "periodic" in kinds and self.cfg.watch.periodic_command:
            outcome = await services.run(
                self.cfg.watch.periodic_command, self.cfg.watch.periodic_command_timeout
            )
            self.log.info("periodic_command", ok=outcome.ok, result=outcome.describe())
        nxt = next_offset_change(self.cfg.render.timezone, dt.datetime.now(dt.UTC))
        if nxt is not None:
            wall = (nxt - dt.datetime.now(dt.UTC)).total_seconds() + 1
            self.dst_due = time.monotonic() + wall
        return result

    def chunks_read(self) -> str:
        """How much of the big tables the last snapshot read: "re-read/all" chunks."""
        last = self.rows.last_read.values()
        return f"{sum(n for n, _ in last)}/{sum(total for _, total in last)}"

    def record(self, result: cycle.Result, trigger: str, duration_ms: float) -> None:
        s = self.state
        s.last_cycle_at, s.last_cycle_ok = now_iso(), result.ok
        s.last_duration_ms = round(duration_ms, 1)
        if result.ok:
            # counts describe the live set, so only a published (or unchanged) set sets them
            if result.model is not None:
                s.counts = result.model.counts()
                s.rejected = [str(r) for r in result.model.rejects]
            s.missing_configfiles = result.missing_count
            s.last_success_at, s.last_error = s.last_cycle_at, ""
            s.generation = result.generation
            s.held_set, s.held_reason = "", ""
            if DHCPD in result.services:
                s.dhcpd_applied, s.dhcpd_applied_set = result.generation, result.set_hash
            event = "published" if result.changed else "unchanged"
            self.log.info(
                event,
                trigger=trigger,
                generation=result.generation,
                duration_ms=round(duration_ms, 1),
                files=result.written + result.removed,
                rejected=len(s.rejected),
                services=sorted(result.services),
                chunks_read=self.chunks_read(),
            )
        elif result.held:
            self.log.debug("held", trigger=trigger, reason=s.held_reason)
        elif result.shrink_held:
            # not remembered as a held set: a person's confirmation must let it through
            s.last_error, s.held_reason = result.error, result.error
            self.log.error("shrink_held", trigger=trigger, error=result.error)
        else:
            s.last_error = result.error
            if result.set_hash:
                s.held_set, s.held_reason = result.set_hash, result.error
            self.log.error(
                "rejected",
                trigger=trigger,
                error=result.error,
                problems=result.problems,
                duration_ms=round(duration_ms, 1),
            )

    async def after_publish(self, result: cycle.Result | None) -> None:
        if result is not None and result.ok:
            for service in (NAMED, CHRONY):
                if service in result.services:
                    outcome = await services.reload(self.cfg, service)
                    self.log.info(
                        "reload", service=service, ok=outcome.ok, result=outcome.describe()
                    )
        await self.restart_if_due()

    async def restart_if_due(self) -> None:
        """Restart dhcpd when its live files differ from what it runs, at most once per
        min_restart_interval; roll back when it does not come up."""
        s = self.state
        if not s.restart_pending:
            return
        now = time.monotonic()
        if (
            self.last_restart is not None
            and now - self.last_restart < self.cfg.watch.min_restart_interval
        ):
            self.restart_due = self.last_restart + self.cfg.watch.min_restart_interval
            return
        self.last_restart = now
        outcome = await services.restart_dhcpd(self.cfg)
        s.dhcpd_last_restart_at, s.dhcpd_last_restart_ok = now_iso(), outcome.ok
        if outcome.ok:
            s.dhcpd_restarted, s.dhcpd_error = s.dhcpd_applied, ""
            self.log.info("restarted", service="dhcpd", generation=s.dhcpd_applied)
            return
        s.dhcpd_error = outcome.describe()
        self.log.error(
            "restart_failed", service="dhcpd", generation=s.dhcpd_applied, error=s.dhcpd_error
        )
        manifest = await asyncio.to_thread(generations.rollback, self.state_dir)
        if manifest is None:
            self.restart_due = now + self.cfg.watch.min_restart_interval
            return
        s.rollbacks += 1
        s.held_set = s.dhcpd_applied_set
        s.held_reason = f"dhcpd did not come up with generation {s.dhcpd_applied}; rolled back"
        s.generation = manifest.generation
        s.dhcpd_applied = manifest.generation
        again = await services.restart_dhcpd(self.cfg)
        s.dhcpd_last_restart_ok = again.ok
        if again.ok:
            s.dhcpd_restarted, s.dhcpd_error = s.dhcpd_applied, ""
            self.log.warning("rolled_back", generation=manifest.generation)
        else:
            s.dhcpd_error = again.describe()
            self.restart_due = time.monotonic() + self.cfg.watch.min_restart_interval
            self.log.error("rollback_restart_failed", error=s.dhcpd_error)

    def reload_config(self) -> None:
        try:
            new = config.load(self.config_path, root=self.root)
        except config.ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc))
            return
        self.cfg = new
        self.log.info("config_reloaded", source=new.source)

    # --- life cycle ------------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop, sig.name)
        self.state.pid, self.state.started_at, self.state.node = os.getpid(), now_iso(), self.node
        self.state.held_set = ""  # a restart of provhad tries again
        period = watchdog_interval()
        if period:
            self.watchdog = Watchdog(self.notifier, period, self.cfg.watch.stall_timeout)
            self.tasks.append(asyncio.create_task(self.watchdog.run()))
        if self.cfg.mqtt.host:
            from provhad.mqtt import MqttLink

            self.mqtt = MqttLink(
                self.cfg.mqtt,
                self.node,
                lambda p: self.want("mqtt", p[:200]),
                backoff_max=self.cfg.mqtt.reconnect_max,
            )
            self.tasks.append(asyncio.create_task(self.mqtt.run()))
        self.notifier.extend_timeout(max(120.0, 3 * self.cfg.validate.timeout))
        # before the first (possibly long) cycle: `provhad check` must not read "stopped"
        self.state.status = "starting"
        with contextlib.suppress(OSError):
            self.state.save(self.state_dir)
        self.log.info("startup", config=self.cfg.source, pid=os.getpid())
        try:
            recovered = await asyncio.to_thread(generations.recover, self.state_dir)
        except generations.PublishError as exc:
            recovered = None
            self.log.error("recover_failed", error=str(exc))
        if recovered:
            self.log.warning("recovered", result=recovered)
            manifest = generations.Manifest.load(self.state_dir)
            self.state.generation = manifest.generation if manifest else self.state.generation
        # fingerprint first, then the snapshot: a change in between is seen by the next poll
        with contextlib.suppress(db.DatabaseError):
            await self.watcher.changed()
        result = await self.run_cycle([Trigger("startup")])
        if self.state.dhcpd_restarted is None and self.state.generation is not None:
            # nothing tells what dhcpd runs with (first start, or a set from `provhad render`)
            self.state.dhcpd_applied = self.state.generation
        await self.after_publish(result)
        self.tasks.append(asyncio.create_task(self.poll()))
        self.report()
        self.notifier.ready(self.state.status)
        try:
            while not self.stop.is_set():
                self.beat()
                batch = await self.collect()
                if not batch:
                    continue
                if any(t.kind == "sighup" for t in batch):
                    self.notifier.reloading()
                    self.reload_config()
                result = await self.run_cycle(batch)
                await self.after_publish(result)
                self.report()
                if any(t.kind == "sighup" for t in batch):
                    self.notifier.ready(self.state.status)
        finally:
            self.notifier.stopping("stopping")
            self.log.info("stopping")
            await cancel_and_wait(self.tasks, STOP_GRACE)
            for task in self.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.log.error(
                        "task_failed", task=task.get_name(), error=repr(task.exception())
                    )
            self.watcher.close()
            self.state.status = "stopped"
            with contextlib.suppress(OSError):
                self.state.save(self.state_dir)
        return 0


def run(
    config_path: str | None, root: str | None, log_target: str = "auto", log_level: str = "info"
) -> int:
    """Entry point of ``provhad run``."""
    log.configure(target=log_target, level=log_level)

    async def main() -> int:
        return await Daemon(config_path, root).serve()

    return asyncio.run(main())
