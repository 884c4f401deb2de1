"""``provhad run``: wiring of the long-running daemon.

Shaped like uvicorn's Config + Server: :class:`Daemon` owns startup, the main loop, signals and
shutdown, over parts that each do one thing:

- :class:`Poller` watches the database and queues a trigger per change;
- :class:`~provhad.scheduler.Scheduler` says which timers are due (periodic rebuild, retry,
  UTC-offset change) and :class:`~provhad.scheduler.Debounce` closes bursts;
- the main loop runs one cycle (``cycle.apply``) at a time and reloads named and chronyd;
- :class:`~provhad.supervisor.Supervisor` brings dhcpd up to date beside the main loop, so
  polling, reporting and the watchdog go on during a restart;
- :class:`~provhad.report.Reporter` tells systemd, the state file and MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import os
import signal
import socket
import time
from typing import Any

from provhad import (
    config,
    cycle,
    db,
    facts,
    generations,
    hosts,
    log,
    omapi,
    plan,
    services,
    validate,
)
from provhad.config import Config
from provhad.hook import Hook
from provhad.notify import Notifier, Watchdog, monotonic_usec, watchdog_interval
from provhad.omapi import OmapiClient
from provhad.render import CHRONY, DHCPD, KEA6, NAMED
from provhad.report import Reporter
from provhad.scheduler import (
    FULL_READ,
    Clock,
    Debounce,
    Scheduler,
    Trigger,
    covered,
    poll_pause,
)
from provhad.services import Outcome
from provhad.state import DhcpdFiles, State, now_iso
from provhad.supervisor import LiveUpdate, Pacing, Supervisor
from provhad.tasks import cancel_and_wait

#: Seconds the helper tasks get to stop (the MQTT link says "offline" and disconnects).
STOP_GRACE = 15.0
#: How long startup waits for another writer (``provhad render``) to finish.
LOCK_WAIT = 120.0
#: The main loop wakes at least this often while waiting for a restart to end.
BEAT_EVERY = 1.0


class Poller:
    """Polls the database for changes and queues a ``poll`` trigger per change; never ends
    because the database is gone. Its state changes (down, back up) are reported at once."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        #: picks the node for polls and snapshots alike; failed nodes go last until probed
        self.cluster = db.Cluster(daemon.cfg.database)
        self.watcher = db.Watcher(daemon.cfg.database, cluster=self.cluster)

    def replace(self, cfg: Config) -> None:
        """New database settings (SIGHUP): a new cluster and watcher; fingerprints start over."""
        self.close()
        self.cluster = db.Cluster(cfg.database)
        self.watcher = db.Watcher(cfg.database, cluster=self.cluster)

    def close(self) -> None:
        self.watcher.close()
        self.cluster.close()

    async def once(self) -> float | None:
        """One poll; the seconds a successful one took, None when it failed."""
        s = self.d.state
        started = time.monotonic()
        try:
            changed = await self.watcher.changed()
        except db.DatabaseError as exc:
            if s.db_ok or s.db_error != str(exc):
                if s.db_ok or not s.db_error:
                    self.d.log.warning("db_down", error=str(exc))
                s.db_ok, s.db_error = False, str(exc)
                self.d.reporter.report()
            return None
        took = time.monotonic() - started
        if not s.db_ok or s.db_node != self.watcher.node:
            was_down = not s.db_ok
            if not was_down:
                self.d.log.warning("db_node_changed", node=self.watcher.node, was=s.db_node)
            s.db_ok, s.db_node, s.db_error = True, self.watcher.node, ""
            if was_down:
                self.d.log.info("db_up", node=self.watcher.node)
                if self.d.scheduler.failures:  # a cycle of ours failed meanwhile
                    self.d.want("retry", "database back")
            self.d.reporter.report()
        if changed:
            self.d.want("poll", ",".join(changed))
        if self.watcher.hook_changes:
            self.d.hook.request("changed: " + ",".join(self.watcher.hook_changes))
        return took

    async def run(self) -> None:
        while True:
            cost = await self.once()
            w = self.d.cfg.watch
            await asyncio.sleep(poll_pause(w.poll_interval, cost, w.max_poll_share))


class DhcpdPorts:
    """The supervisor's effects on this host: dhcpd's files, its unit, the generation store."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        # the files the cycle just wrote are known by their stamp: not read again here
        self.files = DhcpdFiles(
            daemon.cfg.paths.under_root(daemon.cfg.paths.dhcp_dir), digests=plan.LIVE
        )

    async def applied(self) -> str:
        return await asyncio.to_thread(self.files.digest)

    async def restart(self, timeout: float) -> Outcome:
        s, cfg = self.d.state, self.d.cfg
        if s.dhcpd_unproven:
            # published with only its changed hosts checked: dhcpd -t sees the whole set
            # before dhcpd is stopped for it (a refusal rolls back to the running set)
            conf = str(cfg.paths.under_root(cfg.paths.dhcp_dir) / "dhcpd.conf")
            rc, out = await asyncio.to_thread(validate.run_dhcpd_t, conf, cfg.validate)
            if rc != 0:
                return Outcome(False, rc, f"the live set fails dhcpd -t: {out}")
            s.dhcpd_unproven = False
        started = time.monotonic()
        outcome = await services.restart_dhcpd(cfg, timeout)
        if outcome.ok:  # it read the files as last measured (the supervisor holds the lock)
            s.dhcpd_running_files = dict(self.files.hashes)
            await self._omapi_ready(timeout - (time.monotonic() - started))
        return outcome

    async def _omapi_ready(self, budget: float) -> None:
        """Wait (within ``budget`` seconds) until the restarted dhcpd answers OMAPI. It opens
        its OMAPI port only after reading every host: a host change meanwhile would find the
        port closed and restart dhcpd once more, again and again on a big network."""
        client = self.d.omapi_client()
        if client is None:
            return
        deadline = time.monotonic() + max(0.0, budget)
        while True:
            try:
                await client.lookup("")
                return
            except omapi.OmapiRefused:
                return  # it answered
            except omapi.OmapiUnavailable as exc:
                if time.monotonic() >= deadline:
                    self.d.log.warning("omapi_not_ready", error=str(exc))
                    return
            await asyncio.sleep(OMAPI_READY_PAUSE)  # dhcpd is still reading its hosts

    async def mark_running(self) -> int | None:
        # the files as measured under the supervisor's lock: what dhcpd now holds
        self.d.state.dhcpd_running_files = dict(self.files.hashes)
        manifest = await asyncio.to_thread(generations.mark_running, self.d.state_dir)
        return manifest.generation if manifest is not None else None

    def _host_delta(self) -> tuple[hosts.HostDelta, list[str], list[str]]:
        """The OMAPI steps from what dhcpd holds to the live host and subclass files, the
        files they cover, and the other files of dhcpd's that changed too (those need a
        restart). NotLive when that part cannot go by OMAPI or the files dhcpd holds are
        unknown."""
        old, live = self.d.state.dhcpd_running_files, self.files.hashes
        if not old:
            raise NotLive("no record of the files dhcpd runs")
        every = {p for p in old.keys() | live.keys() if old.get(p) != live.get(p)}
        others = sorted(every - set(hosts.LIVE_FILES))
        changed = every - set(others)
        if not changed:
            raise NotLive(f"not only hosts or subclasses changed: {', '.join(others)}")
        before: dict[str, bytes] = {}
        after: dict[str, bytes] = {}
        for rel in changed:
            if rel in old:
                kept = generations.running_file(self.d.state_dir, old[rel])
                try:
                    before[rel] = kept.read_bytes()
                except OSError as exc:
                    raise NotLive(f"{rel} as dhcpd runs it is not kept: {exc}") from exc
            if rel in live:
                after[rel] = (self.files.dhcp_dir / rel).read_bytes()
        try:
            change = hosts.file_delta(before, after)
        except (hosts.HostSyntaxError, UnicodeDecodeError) as exc:
            raise NotLive(str(exc)) from exc
        if change.unsupported:
            # endpoints known by their modem's remote-id: OMAPI has no such attribute
            raise NotLive(f"OMAPI cannot add {', '.join(change.unsupported[:5])}")
        if len(change) > MAX_LIVE_STEPS:
            raise NotLive(f"{len(change)} OMAPI steps: a restart is quicker")
        return change, sorted(changed), others

    async def live_update(self) -> LiveUpdate:
        """Host and subclass-member changes into the running dhcpd by OMAPI. The lines sent
        are byte for byte lines of the live set, which dhcpd -t accepted whole before it went
        live (a member carries no statements: its class's are dhcpd's own)."""
        client = self.d.omapi_client()
        if client is None:
            return LiveUpdate(reason="OMAPI is off ([dhcpd] omapi = false, or no OMAPI key)")
        try:
            change, done, others = await asyncio.to_thread(self._host_delta)
        except NotLive as exc:
            return LiveUpdate(reason=str(exc))
        s = self.d.state
        s.omapi_inflight = True  # durably, before the first OMAPI message
        self.d.reporter.save()
        try:
            result = await client.apply(change)
        finally:
            s.omapi_inflight = False
        if not result.ok:
            why = result.error or ("in doubt (no answer)" if result.unknown else "")
            why = why or "; ".join(f"{n}: {e}" for n, e in result.failed[:3])
            return LiveUpdate(attempted=True, reason=f"OMAPI: {why}")
        if others:
            # served now; what dhcpd holds is the old set plus these hosts until the restart
            # (paced) that the other files need; those versions are kept so that the next
            # host change starts from them (the running set has the older ones)
            for rel in done:
                if rel in self.files.hashes:
                    digest = self.files.hashes[rel]
                    try:
                        await asyncio.to_thread(
                            generations.keep_held,
                            self.d.state_dir,
                            self.files.dhcp_dir / rel,
                            digest,
                        )
                    except generations.PublishError as exc:
                        self.d.log.warning("omapi_not_kept", file=rel, error=str(exc))
                    s.dhcpd_running_files[rel] = digest
                else:
                    s.dhcpd_running_files.pop(rel, None)
        return LiveUpdate(
            applied=True,
            attempted=True,
            deletes=len(change.delete),
            adds=len(change.add),
            partial=bool(others),
            member_deletes=len(change.leave),
            member_adds=len(change.join),
        )

    async def rollback(self) -> int | None:
        manifest = await asyncio.to_thread(generations.rollback, self.d.state_dir)
        if manifest is None:
            return None
        # the running set brings its own named key, chrony include and Kea files back
        await self.d.reload({NAMED, CHRONY, KEA6})
        return manifest.generation


#: Above this many OMAPI steps (host deletes and adds, member removals and additions) one
#: change goes by a restart: at up to a millisecond a step, 5,000 steps keep the update within
#: seconds, while a bulk change (an import, [render] hashed_host_names switched) of 100k
#: hosts would keep dhcpd's OMAPI busy for minutes; dhcpd starts in 36 s at 500k modems.
MAX_LIVE_STEPS = 5000


#: between attempts to reach a restarted dhcpd's OMAPI port
OMAPI_READY_PAUSE = 0.2


class NotLive(Exception):
    """A change the running dhcpd cannot take by OMAPI (the message says why): restart."""


class Daemon:
    """The service: one instance per process."""

    def __init__(self, config_path: str | None, root: str | None = None) -> None:
        self.config_path = config_path
        self.root = root
        self.cfg = config.load(config_path, root=root)
        self.state_dir = self.cfg.paths.under_root(self.cfg.paths.state_dir)
        self.node = socket.gethostname()
        self.log = log.get()
        self.triggers: asyncio.Queue[Trigger] = asyncio.Queue()
        #: the clock triggers and snapshot reads are stamped with
        self.clock: Clock = time.monotonic
        #: when the read of the last snapshot began (None: none read yet)
        self.read_started: float | None = None
        self.stop = asyncio.Event()
        self.state = State.load(self.state_dir)
        self.reporter = Reporter(self.state, self.state_dir, Notifier(), self.node)
        self.scheduler = Scheduler(self.cfg.render.timezone)
        self.poller = Poller(self)
        self.supervisor = Supervisor(
            DhcpdPorts(self), self.state, self.pacing(), self.reporter.report, self.log
        )
        # the big tables of the last snapshot: a change re-reads only the chunks it touched
        self.rows = db.RowCache()
        # what the TFTP cm/*.conf files say, by file stamp (read again when they change)
        self.tftp: dict[str, tuple[Any, bool]] = {}
        self.hook = Hook(
            self.cfg.watch.periodic_command,
            self.cfg.watch.periodic_command_timeout,
            (self.cfg.watch.periodic_command_quiet_period, self.cfg.watch.max_delay),
            self.state,
            self.reporter.report,
            self.log,
        )
        #: the OMAPI client host changes go live through, and the key it was made with
        self.omapi: OmapiClient | None = None
        self.omapi_key: tuple[str, str] | None = None
        self.closing: set[asyncio.Task[None]] = set()  # old OMAPI clients closing
        self.watchdog: Watchdog | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stop_requests = 0

    @property
    def notifier(self) -> Notifier:
        return self.reporter.notifier

    def omapi_client(self) -> OmapiClient | None:
        """The OMAPI client for the key of the live set (failover.conf), None when OMAPI is
        off or there is no key. A new key (SIGHUP, a new set) gets a new client."""
        d = self.cfg.dhcpd
        found = facts.find_omapi_key(self.cfg) if d.omapi else None
        key = (found.name, found.secret) if found is not None else None
        if key != self.omapi_key or (self.omapi is not None and self.omapi.host != d.omapi_host):
            old, self.omapi, self.omapi_key = self.omapi, None, key
            if old is not None:
                self.closing.add(asyncio.get_running_loop().create_task(old.close()))
            if key is not None:
                self.omapi = OmapiClient(d.omapi_host, omapi.PORT, *key, timeout=d.omapi_timeout)
        self.state.omapi = (
            "on"
            if self.omapi is not None
            else "off ([dhcpd] omapi = false)"
            if not d.omapi
            else "off (no OMAPI key in failover.conf)"
        )
        return self.omapi

    def pacing(self) -> Pacing:
        return Pacing(self.cfg.watch.min_restart_interval, self.cfg.dhcpd.restart_timeout)

    def beat(self) -> None:
        if self.watchdog is not None:
            self.watchdog.beat()

    def want(self, kind: str, detail: str = "") -> None:
        self.triggers.put_nowait(Trigger(kind, detail, at=self.clock()))

    # --- signals ---------------------------------------------------------------------------

    def on_sighup(self) -> None:
        self.want("sighup")

    def on_stop(self, signame: str) -> None:
        self.stop_requests += 1
        if self.stop_requests > 1:
            # like uvicorn: a second request means now; a swap in flight is finished or
            # undone by the journal at the next start
            self.log.warning("forced_exit", signal=signame)
            os._exit(1)
        self.log.info("stop_requested", signal=signame)
        # at once, not after the cycle in flight: systemctl status shows the stop under way
        self.notifier.stopping("stopping: finishing the cycle in progress")
        self.stop.set()

    # --- waiting for work ------------------------------------------------------------------

    async def _wait(self, timeout: float) -> Trigger | None:
        """The next queued trigger within ``timeout`` seconds, None otherwise (or on stop)."""
        getter = asyncio.ensure_future(self.triggers.get())
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (getter, stopper):
                if not fut.done():
                    fut.cancel()
        if getter in done:
            return getter.result()
        return None

    async def next_trigger(self) -> Trigger | None:
        """Wait for a queued trigger or a timer; None when stopping."""
        while not self.stop.is_set():
            self.beat()  # the idle loop is alive: it woke up
            if self.reporter.mqtt is not None and self.reporter.mqtt_state() != self.state.mqtt:
                self.reporter.report()  # the broker came or went between cycles
            fired = self.scheduler.due()
            if fired:
                for extra in fired[1:]:
                    self.triggers.put_nowait(extra)
                return fired[0]
            # wake well within stall_timeout even when idle, so the watchdog sees a live loop
            timeout = min(self.cfg.watch.stall_timeout / 3, self.scheduler.wait())
            trigger = await self._wait(timeout)
            if trigger is not None:
                return trigger
        return None

    def queued(self) -> list[Trigger]:
        """The triggers already waiting (they came during the last cycle)."""
        out = []
        while not self.triggers.empty():
            out.append(self.triggers.get_nowait())
        return out

    async def collect(self) -> list[Trigger]:
        """A trigger, every trigger already queued behind it, then whatever follows within
        the debounce window (none by default: the cycle starts at once). Triggers the last
        snapshot already covers (see :func:`~provhad.scheduler.covered`) are dropped."""
        while True:
            first = await self.next_trigger()
            if first is None:
                return []
            # what came during the last cycle has waited long enough: one cycle takes it all
            batch = [t for t in (first, *self.queued()) if not covered(t, self.read_started)]
            if batch:
                break
        w = self.cfg.watch
        burst = Debounce(w.quiet_period, w.max_delay, self.clock)
        burst.add()
        while not self.stop.is_set():
            left = burst.remaining()
            if left <= 0:
                break
            nxt = await self._wait(left)
            if nxt is not None:
                batch.append(nxt)
                burst.add()
        # timers that fired meanwhile join this cycle
        batch.extend(self.scheduler.due())
        return batch

    # --- the cycle -------------------------------------------------------------------------

    async def _publishing(self) -> None:
        """Take the supervisor's lock (no swap while dhcpd starts), beating while a bounded
        restart runs: a hung restart is killed at its timeout, a hung loop starves."""
        while True:
            try:
                await asyncio.wait_for(self.supervisor.lock.acquire(), BEAT_EVERY)
                return
            except TimeoutError:
                since = self.supervisor.busy_since
                if since is not None and time.monotonic() - since < self.pacing().timeout * 2:
                    self.beat()

    async def run_cycle(self, triggers: list[Trigger]) -> cycle.Result | None:
        kinds = frozenset(t.kind for t in triggers)
        trigger = ",".join(sorted(kinds))
        started = time.monotonic()
        self.state.last_trigger = trigger
        result: cycle.Result | None = None
        try:
            with cycle.quiet_gc():
                result = await self._cycle(kinds, trigger)
        except Exception as exc:  # whatever it is, report it and try again later
            self.log.exception("cycle_crashed", trigger=trigger)  # the traceback, once
            result = cycle.Result(error=f"{type(exc).__name__}: {exc}")
        self.record(result, trigger, (time.monotonic() - started) * 1000)
        if result.model is not None:
            self.scheduler.set_interval(result.model.ha.rebuild_interval)
        self.scheduler.cycle_done(kinds, result.ok)
        self.state.failures = self.scheduler.failures
        if result.ok:
            await self.after_publish(result, kinds)
        return result

    async def _cycle(self, kinds: frozenset[str], trigger: str) -> cycle.Result:
        full = not FULL_READ.isdisjoint(kinds)
        before: dict[str, float] = {}
        lap = cycle.Laps(before)
        started = self.clock()
        try:
            snap = await db.read_snapshot(
                self.cfg.database, self.rows, full=full, cluster=self.poller.cluster
            )
        except db.DatabaseError as exc:
            self.state.db_ok, self.state.db_error = False, str(exc)
            self.log.warning("cycle_skipped", trigger=trigger, error=str(exc))
            return cycle.Result(error=str(exc))
        self.state.db_ok, self.state.db_node, self.state.db_error = True, snap.node, ""
        self.read_started = started  # the triggers queued before it are covered by snap
        lap("snapshot")
        if full:
            self.tftp.clear()  # the reconciliation trusts no cache
        facts = await asyncio.to_thread(cycle.gather_facts, self.cfg, snap, self.tftp)
        lap("facts")
        self.beat()
        await self._publishing()
        lap("lock")  # a dhcpd restart in progress
        try:
            result = await asyncio.to_thread(
                cycle.apply, self.cfg, snap, facts, self.beat, self.state.held_set
            )
        except generations.PublishError as exc:
            result = cycle.Result(node=snap.node, error=str(exc))
        finally:
            self.supervisor.lock.release()
        result.phases = before | result.phases
        return result

    def chunks_read(self) -> str:
        """How much of the big tables the last snapshot read: "re-read/all" chunks."""
        last = self.rows.last_read.values()
        return f"{sum(n for n, _ in last)}/{sum(total for _, total in last)}"

    def record(self, result: cycle.Result, trigger: str, duration_ms: float) -> None:
        s = self.state
        s.last_cycle_at, s.last_cycle_ok = now_iso(), result.ok
        s.last_duration_ms = round(duration_ms, 1)
        for note in result.warnings:
            # what `provhad render` prints as "warning:" (a confirmation ignored, a shrink
            # published as confirmed, no OMAPI key ...)
            self.log.warning("cycle_note", trigger=trigger, note=note)
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
                self.supervisor.published_set = result.set_hash
                s.dhcpd_unproven = result.unproven
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
                phases_ms={k: round(v * 1000, 1) for k, v in result.phases.items()},
            )
            return
        # a held set keeps saying why it was held, not "the same set as the one held back"
        s.last_error = s.held_reason if result.held and s.held_reason else result.error
        if result.held:
            self.log.debug("held", trigger=trigger, reason=s.held_reason)
        elif result.shrink_held:
            # not remembered as a held set: a person's confirmation must let it through
            s.held_reason = result.error
            self.log.error("shrink_held", trigger=trigger, error=result.error)
        elif result.set_hash:
            s.held_set, s.held_reason = result.set_hash, result.error
            self.log.error(
                "rejected",
                trigger=trigger,
                error=result.error,
                problems=result.problems,
                duration_ms=round(duration_ms, 1),
            )
        else:
            self.log.error("cycle_failed", trigger=trigger, error=result.error)

    async def reload(self, which: set[str]) -> None:
        """Let named, chronyd and kea-dhcp6 pick up their files; a failure is an error, not a
        note."""
        for service in (NAMED, CHRONY, KEA6):
            if service in which:
                self.beat()  # each reload is bounded by services.timeout (< stall_timeout)
                outcome = await services.reload(self.cfg, service)
                (self.log.info if outcome.ok else self.log.error)(
                    "reload", service=service, ok=outcome.ok, result=outcome.describe()
                )
                if outcome.ok:
                    self.state.reload_errors.pop(service, None)
                else:
                    self.state.reload_errors[service] = outcome.describe()

    async def after_publish(self, result: cycle.Result, kinds: frozenset[str]) -> None:
        await self.reload(result.services)
        if DHCPD in result.services or "startup" in kinds:
            await self.supervisor.measure()
            self.supervisor.poke()
        if "periodic" in kinds:
            self.hook.request("periodic")

    def reload_config(self) -> None:
        """SIGHUP: read the configuration again and apply every part of it that can change
        without a restart; say which keys cannot."""
        try:
            new = config.load(self.config_path, root=self.root)
        except config.ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc))
            self.state.reload_error = str(exc)
            return
        self.state.reload_error = ""
        old = self.cfg
        ignored = [
            f"paths.{f.name}"
            for f in dataclasses.fields(old.paths)
            if getattr(old.paths, f.name) != getattr(new.paths, f.name)
        ]
        if ignored:
            # the writer lock, state file and watched directories belong to this process:
            # the new paths take effect at the next start, until then the old ones stay
            self.log.warning("config_needs_restart", keys=ignored)
            new = dataclasses.replace(new, paths=old.paths)
        self.cfg = new
        if new.database != old.database:
            self.poller.replace(new)
            self.rows = db.RowCache()
        if new.mqtt != old.mqtt:
            self._restart_mqtt()
        if self.watchdog is not None:
            self.watchdog.stale_after = new.watch.stall_timeout
        self.supervisor.pacing = self.pacing()
        w = new.watch
        self.hook.command, self.hook.timeout = w.periodic_command, w.periodic_command_timeout
        self.hook.debounce = (w.periodic_command_quiet_period, w.max_delay)
        self.scheduler.timezone = new.render.timezone
        if new != old:
            self.state.held_set = ""  # e.g. a validator's path was fixed: try the set again
        self.log.info("config_reloaded", source=new.source)

    def _restart_mqtt(self) -> None:
        old = self.tasks.pop("mqtt", None)
        if old is not None:
            old.cancel()  # it says "offline" on its way out
        self.reporter.mqtt = None
        if self.cfg.mqtt.host:
            from provhad.mqtt import MqttLink

            link = MqttLink(
                self.cfg.mqtt,
                self.node,
                lambda p: self.want("mqtt", p[:200]),
                backoff_max=self.cfg.mqtt.reconnect_max,
            )
            self.reporter.mqtt = link
            self.tasks["mqtt"] = asyncio.create_task(link.run(), name="mqtt")

    # --- life cycle ------------------------------------------------------------------------

    async def _take_lock(self) -> generations.WriterLock | None:
        lock = generations.WriterLock(self.state_dir)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                lock.acquire()
                return lock
            except generations.PublishError as exc:
                self.log.error("writer_lock_failed", error=str(exc))
                return None
            except generations.Busy as exc:
                if time.monotonic() >= deadline:
                    self.log.error("writer_lock_busy", error=str(exc))
                    return None
                self.notifier.status(f"waiting: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            if self.stop.is_set():
                return None

    async def startup(self) -> None:
        s = self.state
        s.pid, s.started_at, s.node = os.getpid(), now_iso(), self.node
        s.held_set = ""  # a restart of provhad tries again
        if s.omapi_inflight:
            # a crash during an OMAPI update: what dhcpd holds is unknown, so it restarts
            self.log.warning("omapi_in_doubt")
            s.omapi_inflight, s.dhcpd_running_set, s.dhcpd_running_files = False, "", {}
        s.status = "starting"  # before the first (possibly long) cycle: not "stopped"
        self.reporter.save()
        self.log.info("startup", config=self.cfg.source, pid=os.getpid())
        try:
            recovered = await asyncio.to_thread(generations.recover, self.state_dir)
        except generations.PublishError as exc:
            recovered = None
            self.log.error("recover_failed", error=str(exc))
        if recovered:
            self.log.warning("recovered", result=recovered)
        manifest = generations.Manifest.load(self.state_dir)
        if manifest is not None:
            s.generation = manifest.generation
        # fingerprint first, then the snapshot: a change in between is seen by the next poll
        await self.poller.once()
        await self.run_cycle([Trigger("startup")])
        # whatever the cycle did: is dhcpd running the files on disk? (item 4)
        self.supervisor.poke()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        # SIGUSR1: every thread's stack to stderr (the journal), from C: it works even when
        # the event loop is blocked, which is when it is wanted
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop, sig.name)
        self.notifier.extend_timeout(max(120.0, 3 * self.cfg.validate.timeout) + LOCK_WAIT)
        lock = await self._take_lock()
        if lock is None:
            return 1
        period = watchdog_interval()
        if period:
            self.watchdog = Watchdog(self.notifier, period, self.cfg.watch.stall_timeout)
            self.tasks["watchdog"] = asyncio.create_task(self.watchdog.run(), name="watchdog")
        self._restart_mqtt()
        try:
            await self.startup()
            self.tasks["poll"] = asyncio.create_task(self.poller.run(), name="poll")
            self.tasks["dhcpd"] = asyncio.create_task(self.supervisor.run(), name="dhcpd")
            self.tasks["hook"] = asyncio.create_task(self.hook.run(), name="hook")
            self.reporter.report()
            self.notifier.ready(self.state.status)
            while not self.stop.is_set():
                self.beat()
                batch = await self.collect()
                if not batch:
                    continue
                hup = any(t.kind == "sighup" for t in batch)
                if hup:
                    self.state.reload_started_usec = monotonic_usec()
                    self.notifier.reloading(self.state.reload_started_usec)
                    self.reload_config()
                await self.run_cycle(batch)
                if hup:
                    self.state.reload_finished_usec = monotonic_usec()
                self.reporter.report()  # the state file `provhad reload` waits for
                if hup:
                    self.notifier.ready(self.state.status)
                self._check_tasks()
        finally:
            await self.shutdown(lock)
        return 0

    def _check_tasks(self) -> None:
        """A helper task that died is reported and started again (it must never end)."""
        for name, task in list(self.tasks.items()):
            if task.done() and not task.cancelled():
                self.log.error("task_failed", task=name, error=repr(task.exception()))
                if name == "mqtt":
                    self._restart_mqtt()
                    continue
                factory = {
                    "poll": self.poller.run,
                    "dhcpd": self.supervisor.run,
                    "hook": self.hook.run,
                }.get(name)
                if factory is not None:
                    self.tasks[name] = asyncio.create_task(factory(), name=name)

    async def shutdown(self, lock: generations.WriterLock) -> None:
        self.notifier.stopping("stopping")
        self.log.info("stopping")
        tasks = list(self.tasks.values())
        await cancel_and_wait(tasks, STOP_GRACE)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.log.error("task_failed", task=task.get_name(), error=repr(task.exception()))
        self.poller.close()
        if self.omapi is not None:
            await self.omapi.close()
        self.state.status = "stopped"
        self.reporter.save()
        lock.release()


def run(
    config_path: str | None, root: str | None, log_target: str = "auto", log_level: str = "info"
) -> int:
    """Entry point of ``provhad run``."""
    log.configure(target=log_target, level=log_level)

    async def main() -> int:
        return await Daemon(config_path, root).serve()

    return asyncio.run(main())
