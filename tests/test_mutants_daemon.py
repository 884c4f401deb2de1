"""The daemon's wiring without servers: bursts, timers joining a cycle, what a cycle's outcome
records, the poller's reactions and which services are reloaded (mutants of provhad/daemon.py
that the lab tests in tests/test_daemon.py do not notice, or notice only in minutes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from provhad import cycle, db, services
from provhad.daemon import Daemon, DhcpdPorts
from provhad.render import CHRONY, DHCPD, NAMED
from provhad.scheduler import Trigger
from provhad.services import Outcome


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    """A daemon as configured by an operator (defaults), nothing started."""
    conf = tmp_path / "provhad.toml"
    conf.write_text(
        f"""
[database]
hosts = ["127.0.0.1:9"]
user = "ro"
password = "pw"
name = "nmsprime"

[provha]
own_state = "slave"

[paths]
root = "{tmp_path / "root"}"

[render]
fqdn = "nmsslave.nmsprime.test"
"""
    )
    return Daemon(str(conf))


class Steps:
    """A clock that returns the given times in turn, then the last one."""

    def __init__(self, *times: float) -> None:
        self.times: Iterator[float] = iter(times)
        self.last = times[-1]

    def __call__(self) -> float:
        self.last = next(self.times, self.last)
        return self.last


def quiet_timers(d: Daemon, clock: Any) -> None:
    d.scheduler.clock = clock
    d.scheduler.periodic_due, d.scheduler.retry_due, d.scheduler.dst_due = 100.0, None, None


async def test_a_burst_queued_at_once_is_one_cycle(d: Daemon) -> None:
    quiet_timers(d, Steps(0.0))
    for n in range(3):
        d.want("poll", f"change {n}")
    batch = await d.collect()
    assert [t.detail for t in batch] == ["change 0", "change 1", "change 2"]


async def test_by_default_a_cycle_starts_without_waiting_for_more(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The triggers queued during the last cycle join the next one at once; nothing is
    waited for after them (quiet_period 0)."""
    quiet_timers(d, Steps(0.0))
    waits: list[float] = []
    real_wait = d._wait

    async def wait(timeout: float) -> Trigger | None:
        waits.append(timeout)
        return await real_wait(timeout)

    monkeypatch.setattr(d, "_wait", wait)
    for n in range(3):
        d.want("poll", f"change {n}")
    batch = await d.collect()
    assert [t.detail for t in batch] == ["change 0", "change 1", "change 2"]
    assert len(waits) == 1  # the wait that took the first trigger; no debounce after it
    assert d.triggers.empty()


def test_the_hook_collects_with_its_own_quiet_period(d: Daemon) -> None:
    assert d.hook.debounce == (1.0, 15.0)
    assert d.config_path is not None
    conf = Path(d.config_path)
    conf.write_text(conf.read_text() + "\n[watch]\nperiodic_command_quiet_period = 4\n")
    d.reload_config()
    assert d.hook.debounce == (4.0, 15.0)
    assert d.cfg.watch.quiet_period == 0.0


async def test_a_change_the_last_read_holds_makes_no_cycle(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet_timers(d, Steps(0.0))
    d.clock = Steps(9.0, 9.5, 9.6, 11.0)
    d.read_started = 10.0
    d.want("poll", "seen before the read")
    d.want("mqtt", "sent before the read")
    d.want("sighup")
    d.want("poll", "seen after it")
    batch = await d.collect()
    assert [(t.kind, t.detail) for t in batch] == [("sighup", ""), ("poll", "seen after it")]
    d.clock = Steps(11.0, 13.0)
    d.read_started = 12.0
    d.want("poll", "seen before the last read")
    real_wait, waits = d._wait, []

    async def wait(timeout: float) -> Trigger | None:
        waits.append(timeout)
        if len(waits) == 2:  # collect waits again, past the covered trigger
            d.want("poll", "seen after it")
        return await real_wait(timeout)

    monkeypatch.setattr(d, "_wait", wait)
    batch = await d.collect()  # waits past the covered trigger instead of cycling for it
    assert [t.detail for t in batch] == ["seen after it"]


async def test_with_a_quiet_period_a_burst_is_collected(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quiet_period`` set: a trigger that comes within it joins the cycle (the window runs
    on the daemon's clock)."""
    quiet_timers(d, Steps(0.0))
    d.cfg = dataclasses.replace(d.cfg, watch=dataclasses.replace(d.cfg.watch, quiet_period=5.0))
    # the first want, the burst starts, 1 s in: a want, its add, then past the window
    d.clock = Steps(100.0, 100.0, 101.0, 101.0, 102.0, 120.0)
    real_wait = d._wait
    waits: list[float] = []

    async def wait(timeout: float) -> Trigger | None:
        waits.append(timeout)
        if len(waits) == 2:  # the debounce's wait: the burst goes on
            d.want("poll", "within the quiet period")
        return await real_wait(timeout)

    monkeypatch.setattr(d, "_wait", wait)
    d.want("poll", "first")
    batch = await d.collect()
    assert [t.detail for t in batch] == ["first", "within the quiet period"]
    assert waits[1] == pytest.approx(4.0)  # 5 s after the first trigger, 1 s of it gone


async def test_only_a_snapshot_read_moves_the_read_mark(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    d.clock = Steps(5.0, 7.0, 8.0)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise db.DatabaseError("no node")

    monkeypatch.setattr(db, "read_snapshot", down)
    result = await d._cycle(frozenset({"poll"}), "poll")
    assert result.error == "no node" and d.read_started is None

    class Read(Exception):
        pass

    async def read(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(node="db1")

    def stop_here(*args: Any) -> Any:
        raise Read

    monkeypatch.setattr(db, "read_snapshot", read)
    monkeypatch.setattr(cycle, "gather_facts", stop_here)
    with pytest.raises(Read):
        await d._cycle(frozenset({"poll"}), "poll")
    assert d.read_started == 7.0  # the clock when the read began, not after it


async def test_a_timer_that_fires_during_the_burst_joins_it(d: Daemon) -> None:
    quiet_timers(d, Steps(0.0, 1000.0))  # due before the burst, then during it
    d.want("poll", "modem")
    batch = await d.collect()
    assert [t.kind for t in batch] == ["poll", "periodic"]


async def test_every_due_timer_is_kept(d: Daemon) -> None:
    quiet_timers(d, Steps(0.0))
    d.scheduler.periodic_due = d.scheduler.retry_due = 0.0
    assert await d.next_trigger() == Trigger("periodic")
    assert d.triggers.get_nowait().kind == "retry"


def fake_model(interval: int = 3600) -> Any:
    return SimpleNamespace(
        ha=SimpleNamespace(rebuild_interval=interval), counts=lambda: {"modems": 1}, rejects=()
    )


def test_a_good_cycle_records_success_and_clears_the_hold(d: Daemon) -> None:
    d.state.held_set, d.state.held_reason = "old", "dhcpd refused it"
    d.record(cycle.Result(ok=True, services={DHCPD}, set_hash="new", generation=4), "poll", 1.0)
    s = d.state
    assert (s.held_set, s.held_reason, s.generation) == ("", "", 4)
    assert s.last_success_at and s.last_success_at == s.last_cycle_at
    assert d.supervisor.published_set == "new"


def test_a_set_not_read_whole_by_dhcpd_is_proven_before_a_restart(d: Daemon) -> None:
    """Only its changed hosts checked, or its host table in pieces: dhcpd -t reads the whole
    set before dhcpd is restarted with it (DhcpdPorts.restart); a whole check clears that."""
    from provhad import validate

    for validated, hosts_only, unproven in [
        (["dhcpd -t (the changed hosts)"], True, True),
        ([validate.IN_PIECES, "named-checkconf"], False, True),
        (["dhcpd -t", "named-checkconf"], False, False),
    ]:
        result = cycle.Result(ok=True, services={DHCPD}, set_hash="s", generation=2)
        result.validated, result.hosts_only = validated, hosts_only
        d.record(result, "poll", 1.0)
        assert d.state.dhcpd_unproven is unproven, validated


def test_a_set_that_does_not_touch_dhcpd_is_not_dhcpds_published_set(d: Daemon) -> None:
    d.record(cycle.Result(ok=True, services={NAMED}, set_hash="named-only"), "poll", 1.0)
    assert d.supervisor.published_set == ""


async def test_the_cycle_outcome_drives_the_scheduler(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = [cycle.Result(ok=True, model=fake_model(7200)), cycle.Result(error="boom")]

    async def one(kinds: frozenset[str], trigger: str) -> cycle.Result:
        return outcomes.pop(0)

    async def nothing(result: cycle.Result, kinds: frozenset[str]) -> None:
        return None

    monkeypatch.setattr(d, "_cycle", one)
    monkeypatch.setattr(d, "after_publish", nothing)
    await d.run_cycle([Trigger("periodic")])
    assert d.scheduler.interval == 7200
    await d.run_cycle([Trigger("poll")])
    assert d.scheduler.failures == d.state.failures == 1
    assert d.scheduler.retry_due is not None


async def test_startup_measures_dhcpd_even_when_nothing_changed(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[int] = []

    async def measure() -> None:
        measured.append(1)

    monkeypatch.setattr(d.supervisor, "measure", measure)
    await d.after_publish(cycle.Result(ok=True), frozenset({"startup"}))
    assert measured == [1] and d.supervisor.wake.is_set()


async def test_only_services_whose_files_changed_are_reloaded(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloaded: list[str] = []

    async def reload(cfg: Any, service: str) -> Outcome:
        reloaded.append(service)
        return Outcome(True, 0, "")

    monkeypatch.setattr(services, "reload", reload)
    await d.reload({NAMED, DHCPD})
    assert reloaded == [NAMED]
    await d.reload({CHRONY})
    assert reloaded == [NAMED, CHRONY]


@pytest.mark.parametrize(("kind", "kept"), [("periodic", False), ("poll", True)])
async def test_a_full_read_drops_the_tftp_cache(
    d: Daemon, monkeypatch: pytest.MonkeyPatch, kind: str, kept: bool
) -> None:
    async def snapshot(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(node="db1")

    seen: list[bool] = []

    def facts(cfg: Any, snap: Any, tftp: dict[str, Any]) -> None:
        seen.append(bool(tftp))

    monkeypatch.setattr(db, "read_snapshot", snapshot)
    monkeypatch.setattr(cycle, "gather_facts", facts)
    monkeypatch.setattr(cycle, "apply", lambda *a: cycle.Result(ok=True))
    d.tftp["cm-1.conf"] = ((1, 2, 3, 4), True)
    result = await d._cycle(frozenset({kind}), kind)
    assert result.ok and seen == [kept]


class FakeWatcher:
    def __init__(self) -> None:
        self.node = "db1:3306"
        self.answers: list[list[str] | Exception] = []
        self.hook_changes: list[str] = []

    async def changed(self) -> list[str]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_poller_reports_an_outage_and_retries_a_failed_cycle_when_back(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = FakeWatcher()
    monkeypatch.setattr(d.poller, "watcher", watcher)
    reports: list[str] = []
    monkeypatch.setattr(d.reporter, "report", lambda: reports.append(d.state.db_error))
    d.state.db_ok, d.state.db_node, d.state.last_cycle_ok = True, "db1:3306", True
    watcher.answers = [db.DatabaseError("no node"), ["modem"]]
    assert await d.poller.once() is None
    assert not d.state.db_ok and reports == ["no node"]
    d.scheduler.cycle_done(frozenset({"poll"}), ok=False)  # a cycle failed in the outage
    assert await d.poller.once() is not None
    assert d.state.db_ok and d.state.db_error == ""
    queued = [d.triggers.get_nowait() for _ in range(d.triggers.qsize())]
    assert [t.kind for t in queued] == ["retry", "poll"]
    assert queued[1].detail == "modem"


async def test_poller_queues_nothing_when_nothing_changed(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = FakeWatcher()
    monkeypatch.setattr(d.poller, "watcher", watcher)
    d.state.db_ok, d.state.db_node, d.state.last_cycle_ok = True, "db1:3306", True
    watcher.answers = [[]]
    await d.poller.once()
    assert d.triggers.empty()


async def test_an_unproven_set_is_proven_whole_before_dhcpd_is_restarted(
    d: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: a set published with only its changed hosts checked is given whole to the
    real dhcpd -t before dhcpd is restarted with it; refused, dhcpd is not touched."""
    from provhad import services
    from provhad.daemon import DhcpdPorts

    conf = tmp_path / "root/etc/dhcp-nmsprime/dhcpd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("this is not dhcpd syntax;\n")
    restarts: list[float] = []

    async def restart(cfg: object, timeout: float | None = None) -> services.Outcome:
        restarts.append(timeout or 0.0)
        return services.Outcome(True, 0, "")

    monkeypatch.setattr(services, "restart_dhcpd", restart)
    ports = DhcpdPorts(d)
    d.state.dhcpd_unproven = True
    refused = await ports.restart(90.0)
    assert not refused.ok and "fails dhcpd -t" in refused.output and restarts == []
    assert d.state.dhcpd_unproven
    conf.write_text('option domain-name "x";\n')
    ok = await ports.restart(90.0)
    assert ok.ok and restarts == [90.0] and not d.state.dhcpd_unproven
    d.state.dhcpd_unproven = False
    conf.write_text("broken again;\n")
    assert (await ports.restart(90.0)).ok  # a set proven whole is not checked again


async def test_a_bulk_host_change_goes_by_a_restart_not_by_omapi(d: Daemon) -> None:
    """More OMAPI steps than MAX_LIVE_STEPS (an import, hashed_host_names switched): one
    restart, not minutes of OMAPI; up to the bound it goes by OMAPI."""
    import dataclasses
    import hashlib

    from provhad import generations
    from provhad.daemon import MAX_LIVE_STEPS, DhcpdPorts

    d.cfg = dataclasses.replace(
        d.cfg, render=dataclasses.replace(d.cfg.render, omapi_secret="c2VjcmV0c2VjcmV0")
    )
    dhcp = d.cfg.paths.under_root(d.cfg.paths.dhcp_dir)
    dhcp.mkdir(parents=True)

    def table(n: int) -> bytes:
        return "".join(
            f"host cm-{i} {{ hardware ethernet 00:11:22:{i >> 16 & 255:02x}:"
            f"{i >> 8 & 255:02x}:{i & 255:02x}; }}\n"
            for i in range(n)
        ).encode()

    ports = DhcpdPorts(d)
    for held, expect_cap in ((MAX_LIVE_STEPS + 1, True), (MAX_LIVE_STEPS, False)):
        old = table(held)
        digest = hashlib.sha256(old).hexdigest()
        kept = generations.running_file(d.state_dir, digest)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(old)
        d.state.dhcpd_running_files = {"modems-host.conf": digest}
        (dhcp / "modems-host.conf").write_bytes(b"")  # every host deleted
        await ports.applied()
        upd = await ports.live_update()
        if expect_cap:
            assert not upd.attempted and f"{held} OMAPI steps" in upd.reason, upd
        else:  # past the bound: OMAPI is asked (and here nobody answers)
            assert upd.attempted and not upd.applied and "OMAPI" in upd.reason, upd
    if d.omapi is not None:
        await d.omapi.close()


async def test_the_state_says_whether_omapi_is_on_and_why_not(d: Daemon) -> None:
    import dataclasses

    assert d.omapi_client() is None
    assert d.state.omapi == "off (no OMAPI key in failover.conf)"
    d.cfg = dataclasses.replace(
        d.cfg, render=dataclasses.replace(d.cfg.render, omapi_secret="c2VjcmV0c2VjcmV0")
    )
    assert d.omapi_client() is not None and d.state.omapi == "on"
    d.cfg = dataclasses.replace(d.cfg, dhcpd=dataclasses.replace(d.cfg.dhcpd, omapi=False))
    assert d.omapi_client() is None and d.state.omapi == "off ([dhcpd] omapi = false)"
    for task in d.closing:
        await task


class FakeOmapi:
    """dhcpd's OMAPI as DhcpdPorts sees it: takes every delta (the real client and dhcpd are
    tested in tests/test_omapi.py and the HA lab)."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.deltas: list[Any] = []

    async def apply(self, change: Any) -> Any:
        from provhad.omapi import ApplyResult

        self.deltas.append(change)
        return ApplyResult(applied=len(change))

    async def close(self) -> None:
        pass


async def test_after_a_partial_update_the_next_host_change_still_goes_live(d: Daemon) -> None:
    """Hosts went live while a pool waits for the restart: what dhcpd holds is kept, so the
    next host change is a delta from it, not a wait for that restart (the churn lab found
    every later host change waiting)."""
    import dataclasses
    import hashlib

    from provhad import generations
    from provhad.daemon import DhcpdPorts

    d.cfg = dataclasses.replace(
        d.cfg, render=dataclasses.replace(d.cfg.render, omapi_secret="c2VjcmV0c2VjcmV0")
    )
    fake = FakeOmapi()
    d.omapi, d.omapi_key = fake, (d.cfg.render.omapi_key_name, "c2VjcmV0c2VjcmV0")  # type: ignore[assignment]
    dhcp = d.cfg.paths.under_root(d.cfg.paths.dhcp_dir)
    dhcp.mkdir(parents=True)

    def host(i: int) -> bytes:
        return f"host cm-{i} {{ hardware ethernet 00:11:22:33:44:{i:02x}; }}\n".encode()

    held = {"modems-host.conf": host(1), "cmts_gws.conf": b"# pools 1\n"}
    for data in held.values():  # the running set, as mark_running keeps it
        kept = generations.running_file(d.state_dir, hashlib.sha256(data).hexdigest())
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(data)
    d.state.dhcpd_running_files = {k: hashlib.sha256(v).hexdigest() for k, v in held.items()}
    ports = DhcpdPorts(d)

    def publish(name: str, data: bytes) -> None:  # as the swap does: a new inode by rename
        (dhcp / f".{name}.new").write_bytes(data)
        (dhcp / f".{name}.new").replace(dhcp / name)

    # a host and a pool change together: the host part goes live, the pool waits
    publish("modems-host.conf", host(1) + host(2))
    publish("cmts_gws.conf", b"# pools 2\n")
    await ports.applied()
    first = await ports.live_update()
    assert first.applied and first.partial and first.adds == 1
    # another host change before the restart: a delta from what dhcpd holds now
    publish("modems-host.conf", host(1) + host(2) + host(3))
    await ports.applied()
    second = await ports.live_update()
    assert second.applied and second.partial and (second.deletes, second.adds) == (0, 1), second
    assert [e.name for e in fake.deltas[1].add] == ["cm-3"]


async def test_a_restart_waits_for_omapi_within_its_budget(
    d: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dhcpd opens OMAPI only after reading its hosts; a restart counts as done when OMAPI
    answers (a host change meanwhile would restart it again), or when its budget is spent."""
    import dataclasses
    import time

    from provhad.daemon import DhcpdPorts

    logged: list[str] = []
    monkeypatch.setattr(d.log, "warning", lambda event, **kw: logged.append(event))
    ports = DhcpdPorts(d)
    t = time.monotonic()
    await ports._omapi_ready(30.0)  # OMAPI off (no key): nothing to wait for
    assert time.monotonic() - t < 1.0 and logged == []
    d.cfg = dataclasses.replace(
        d.cfg,
        render=dataclasses.replace(d.cfg.render, omapi_secret="c2VjcmV0c2VjcmV0"),
        dhcpd=dataclasses.replace(d.cfg.dhcpd, omapi_host="127.0.0.1"),
    )
    t = time.monotonic()
    await ports._omapi_ready(0.5)  # nobody listens: given up after the budget
    assert 0.5 <= time.monotonic() - t < 10 and logged == ["omapi_not_ready"]

    async def restarted(cfg: object, timeout: float | None = None) -> services.Outcome:
        return services.Outcome(True, 0, "")

    monkeypatch.setattr(services, "restart_dhcpd", restarted)
    assert (await ports.restart(1.0)).ok  # the budget is what is left of the restart's
    assert logged == ["omapi_not_ready", "omapi_not_ready"]
    if d.omapi is not None:
        await d.omapi.close()


def test_the_supervisor_knows_the_files_the_cycle_wrote(d: Daemon) -> None:
    """One cache of file stamps to hashes: what the cycle wrote (plan.LIVE) is not hashed
    again when the supervisor asks what dhcpd's files are."""
    from provhad import plan

    ports = d.supervisor.ports
    assert isinstance(ports, DhcpdPorts) and ports.files.digests is plan.LIVE
