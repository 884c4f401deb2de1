"""`provhad run`: the real process against real MariaDB, dhcpd -t, a notify socket."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from provhad import generations
from provhad.scheduler import next_offset_change
from provhad.testbed import MariaDB
from tests.daemon_lab import REPO, DaemonLab, Gate
from tests.test_cli_render import provhad


def test_startup_changes_and_shutdown(lab: DaemonLab) -> None:
    lab.configure()
    lab.start()
    ready = lab.wait(lambda m: m.get("READY") == "1")
    assert "live gen 1" in ready["STATUS"] and "db 127.0.0.1" in ready["STATUS"]
    assert any("EXTEND_TIMEOUT_USEC" in m for m in lab.notify.messages)
    lab.wait_restarts(1)  # the first set went live: dhcpd restarted once
    assert lab.state()["restart_pending"] is False

    # an insert
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100070, 'cm-100070', '00:11:22:33:44:70')"
    )
    lab.wait_status("live gen 2")
    assert "cm-100070" in lab.file("modems-host.conf")
    lab.wait_restarts(2)

    # a write to a column generation does not read, then a hard delete: one generation only
    lab.sql("UPDATE modem SET us_pwr = 40, updated_at = NOW() WHERE id = 100000")
    lab.sql("DELETE FROM modem WHERE id = 100070")
    lab.wait_status("live gen 3")
    assert "cm-100070" not in lab.file("modems-host.conf")

    # two updates within the same second of updated_at, the first one already published
    lab.sql("UPDATE modem SET public = 1, updated_at = '2021-01-01 00:00:00' WHERE id = 100001")
    lab.wait_status("live gen 4")
    lab.sql("UPDATE modem SET public = 0, updated_at = '2021-01-01 00:00:00' WHERE id = 100001")
    lab.wait_status("live gen 5")
    assert "00:11:22:33:44:01" not in lab.file("modems-clients-public.conf")

    # a soft delete of a CMTS removes its file
    lab.sql("UPDATE netgw SET deleted_at = NOW() WHERE id = 2")
    lab.wait_status("live gen 6")
    assert not (lab.root / "etc/dhcp-nmsprime/cmts_gws/2.conf").exists()

    assert lab.stop() == 0
    assert lab.notify.messages[-1].get("STOPPING") == "1"
    out = lab.output()
    assert "published" in out and "restarted" in out


def test_burst_is_debounced(lab: DaemonLab) -> None:
    lab.configure(extra="")
    lab.conf.write_text(lab.conf.read_text().replace("quiet_period = 0.3", "quiet_period = 1.5"))
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    for i in range(30):
        lab.sql(
            f"INSERT INTO modem (id, hostname, mac) VALUES ({100100 + i}, 'cm-{100100 + i}',"
            f" '00:11:22:33:45:{i:02x}')"
        )
    status = lab.wait_status("live gen 2")
    hosts = lab.file("modems-host.conf")
    assert all(f"cm-{100100 + i} " in hosts for i in range(30)), status
    lab.wait_restarts(2)
    assert lab.stop() == 0


def test_restart_rate_limit_keeps_pending_restart(lab: DaemonLab) -> None:
    lab.configure(min_restart_interval=3600)
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait_restarts(1)
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100071, 'cm-100071', '00:11:22:33:44:71')"
    )
    status = lab.wait_status("live gen 2")
    assert "dhcpd restart pending" in status
    assert lab.restart_count() == 1
    s = lab.state()
    assert s["restart_pending"] is True and s["generation"] == 2
    assert s["dhcpd_running_generation"] == 1
    assert lab.stop() == 0


def test_rollback_when_dhcpd_does_not_come_up(lab: DaemonLab) -> None:
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait_restarts(1)
    before = lab.file("modems-host.conf")
    (lab.tmp / "fail-next-check").touch()
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100072, 'cm-100072', '00:11:22:33:44:72')"
    )
    status = lab.wait_status("HELD")
    assert "rolled back" in status
    assert lab.file("modems-host.conf") == before  # the previous generation is live again
    s = lab.state()
    assert s["rollbacks"] == 1 and s["restart_pending"] is False
    assert lab.restart_count() == 3  # first set, the failed one, the rolled back one
    manifest = generations.Manifest.load(lab.root / "var/lib/provhad")
    assert manifest is not None
    for path, digest in manifest.files.items():
        assert generations.sha256(Path(path).read_bytes()) == digest
    # the same data is not tried again on every poll; a new change is
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100073, 'cm-100073', '00:11:22:33:44:73')"
    )
    lab.wait(lambda m: "HELD" not in m.get("STATUS", "HELD"))
    assert "cm-100073" in lab.file("modems-host.conf")
    assert lab.stop() == 0


def test_sighup_reloads(lab: DaemonLab) -> None:
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    assert lab.proc is not None
    lab.conf.write_text(
        lab.conf.read_text().replace(
            'fqdn = "nmsslave.nmsprime.test"', 'fqdn = "other.nmsprime.test"'
        )
    )
    lab.proc.send_signal(signal.SIGHUP)
    reloading = lab.wait(lambda m: m.get("RELOADING") == "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    lab.wait(lambda m: m.get("READY") == "1")
    assert "\\005other" in lab.file("global.conf")
    assert lab.stop() == 0


def test_database_down_at_start_keeps_live_set(lab: DaemonLab) -> None:
    lab.configure()
    lab.conf.write_text(
        lab.conf.read_text().replace(
            f'hosts = ["{lab.db.host}:{lab.db.port}"]', 'hosts = ["127.0.0.1:1"]'
        )
    )
    live = lab.root / "etc/dhcp-nmsprime"
    live.mkdir(parents=True)
    (live / "modems-host.conf").write_text("# the set that was live before\n")
    lab.start()
    ready = lab.wait(lambda m: m.get("READY") == "1")
    assert "db DOWN" in ready["STATUS"]
    assert (live / "modems-host.conf").read_text() == "# the set that was live before\n"
    assert lab.proc is not None and lab.proc.poll() is None
    assert lab.stop() == 0


def test_sigterm_mid_cycle_finishes_the_publish(lab: DaemonLab) -> None:
    gate = Gate(lab.tmp)
    lab.configure()
    lab.conf.write_text(lab.conf.read_text() + f'\n[validate]\ndhcpd = "{gate.wrapper}"\n')
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    gate.close_next()
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100074, 'cm-100074', '00:11:22:33:44:74')"
    )
    gate.wait_inside()
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGTERM)  # in the middle of the cycle
    gate.open()
    # one SIGTERM only (a second one would force the exit): wait for the end
    assert lab.proc.wait(timeout=60) == 0, lab.output()
    assert lab.stop() == 0
    gate.close()
    assert any(m.get("STOPPING") == "1" for m in lab.notify.messages)
    manifest = generations.Manifest.load(lab.root / "var/lib/provhad")
    assert manifest is not None and manifest.generation == 2  # the publish was completed
    for path, digest in manifest.files.items():
        assert generations.sha256(Path(path).read_bytes()) == digest
    assert "cm-100074" in lab.file("modems-host.conf")
    assert not list(lab.root.rglob(".*provhad-*"))


def test_hung_loop_starves_the_watchdog(lab: DaemonLab) -> None:
    """A main loop stuck where no deadline reaches (a read from a hung /tftpboot, here a
    FIFO nobody writes to) stops the pings within stall_timeout; every bounded wait (the
    validators, restarts, reloads) is shorter than it, which config.load enforces."""
    lab.configure()
    text = lab.conf.read_text().replace(
        "[watch]\n", "[watch]\nstall_timeout = 3.0\nperiodic_command_timeout = 2\n", 1
    )
    text = text.replace("connect_timeout = 2\n", "connect_timeout = 1\n")
    text = text.replace(
        "check_attempts = 1\n",
        "check_attempts = 1\nrestart_timeout = 1\ncheck_timeout = 0.5\ncheck_interval = 0.1\n",
    )
    lab.conf.write_text(text + "\n[validate]\ntimeout = 2\n[services]\ntimeout = 2\n")
    cm = lab.root / "tftpboot/cm"
    cm.mkdir(parents=True)
    lab.start(env={"WATCHDOG_USEC": "200000"})  # ping every 0.1 s while healthy
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: m.get("WATCHDOG") == "1", timeout=10)
    os.mkfifo(cm / "hung.conf")
    lab.sql("UPDATE provbase SET multiple_provisioning_systems = 1")
    # the loop blocks opening the FIFO; pings must stop within stall_timeout of the last beat
    pings: list[float] = []
    end = time.monotonic() + 8
    while (left := end - time.monotonic()) > 0:
        msg = lab.notify.read(left)
        if msg is not None and msg.get("WATCHDOG") == "1":
            pings.append(time.monotonic())
    assert pings, "no ping at all: the daemon never ran"
    assert pings[-1] < end - 3.0, (end, pings)  # starved for longer than stall_timeout
    # release the reader: it sees an empty file, and the loop runs again
    fd = os.open(cm / "hung.conf", os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)
    lab.wait(lambda m: m.get("WATCHDOG") == "1", timeout=10)  # fed again once the loop runs
    assert lab.stop() == 0


def test_periodic_rebuild_runs_under_constant_traffic(lab: DaemonLab) -> None:
    """Item 2: with a change more often than the rebuild interval, the periodic full read and
    the configfile hook still run, at the interval read live from provha (bounded below at
    60 s, so 0 does not mean every second)."""
    marker = lab.tmp / "hook-ran"
    lab.configure()
    text = lab.conf.read_text().replace(
        "[watch]\n", f'[watch]\nperiodic_command = ["touch", "{marker}"]\n', 1
    )
    lab.conf.write_text(text)
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: marker.exists())  # the hook's first run: its inputs were all new
    marker.unlink()
    lab.sql("UPDATE provha SET slave_config_rebuild_interval = 0")
    lab.wait(lambda m: "slave_config_rebuild_interval" in str(lab.state()["rejected"]))
    begun = time.monotonic()
    n = 0
    # traffic the hook does not read (endpoint names): only the periodic rebuild runs it
    while not marker.exists():
        assert time.monotonic() - begun < 120, "the periodic rebuild never ran under traffic"
        n += 1
        lab.sql(f"UPDATE endpoint SET hostname = 'pc-traffic-{n}' WHERE id = 200000")
        lab.wait_status(f"live gen {n + 1},")
    took = time.monotonic() - begun
    assert 50 < took < 75, took  # not every second (interval 0), not never
    assert n >= 10  # the traffic went on the whole time
    assert any(
        "trigger=periodic" in ln and ("event=published" in ln or "event=unchanged" in ln)
        for ln in lab.output().splitlines()
    )
    assert any(
        "event=configfile_build" in ln and "periodic" in ln for ln in lab.output().splitlines()
    )
    assert lab.stop() == 0


def test_configfile_change_runs_the_hook_without_a_rebuild(lab: DaemonLab) -> None:
    """Issue 11 item 8: a change of what configfiles are built from runs the hook; nothing
    is published for it."""
    marker = lab.tmp / "hook-runs"
    lab.configure()
    text = lab.conf.read_text().replace(
        "[watch]\n", f'[watch]\nperiodic_command = ["sh", "-c", "echo >> {marker}"]\n', 1
    )
    lab.conf.write_text(text)
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: marker.exists() and lab.state()["hook_ok"] is True)
    runs = len(marker.read_text().splitlines())
    lab.sql("INSERT INTO configfile (id, name, text, device) VALUES (9, 'cm', 'x', 'cm')")
    lab.sql("UPDATE modem SET configfile_id = 9")
    lab.wait(lambda m: len(marker.read_text().splitlines()) == runs + 1)
    assert lab.state()["generation"] == 1  # no rebuild for it
    assert lab.stop() == 0
    assert "event=configfile_build" in lab.output()


def test_status_command(lab: DaemonLab) -> None:
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    # the first publish restarts dhcpd beside the loop: stopped before that, the status would
    # rightly say "restart pending" (the next start restarts it)
    if "restart pending" in lab.notify.last_status:
        lab.wait(lambda m: "restart pending" not in m.get("STATUS", "restart pending"))
    assert lab.stop() == 0
    out = provhad("status", "--config", lab.conf)
    assert out.returncode == 3  # LSB: not running (it was stopped)
    assert "live generation:     1" in out.stdout and "database:            ok" in out.stdout
    as_json = provhad("status", "--json", "--config", lab.conf)
    data = json.loads(as_json.stdout)
    assert data["generation"] == 1 and data["restart_pending"] is False
    assert data["status"] == "stopped"


def test_next_offset_change() -> None:
    after = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert next_offset_change("Europe/Berlin", after) == dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC)
    autumn = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert next_offset_change("Europe/Berlin", autumn) == dt.datetime(
        2026, 10, 25, 1, tzinfo=dt.UTC
    )
    assert next_offset_change("UTC", after) is None


def test_shrink_guard_holds_until_a_person_confirms(lab: DaemonLab) -> None:
    lab.configure(max_shrink_percent=10)
    # the floor (50 hosts by default) would let this small network shrink: share alone here
    lab.conf.write_text(
        lab.conf.read_text().replace("[safety]\n", "[safety]\nmax_shrink_hosts = 0\n")
    )
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.sql("DELETE FROM modem")  # a half-emptied database must not empty dhcpd
    status = lab.wait_status("HELD")
    assert "shrink guard: hosts would drop from 6 to 1" in status and "live gen 1" in status
    assert "cm-100000" in lab.file("modems-host.conf")
    confirm = provhad("confirm-shrink", "--config", lab.conf)
    assert confirm.returncode == 0
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGHUP)
    lab.wait_status("live gen 2")
    assert "cm-100000" not in lab.file("modems-host.conf")
    assert lab.stop() == 0


async def _retained_status(host: str, port: int, topic: str) -> dict[str, object]:
    import aiomqtt

    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            return json.loads(bytes(message.payload).decode())  # type: ignore[no-any-return]
    raise AssertionError("no message")


async def test_mqtt_status_trigger_and_broker_loss(lab: DaemonLab, tmp_path: Path) -> None:
    import asyncio

    from provhad.testbed import Mosquitto

    broker = Mosquitto(tmp_path / "mqtt")
    broker.start()
    try:
        lab.configure(
            extra=f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            'topic_prefix = "test/provha"\ntrigger_topic = "test/provha/rebuild"\n'
            "reconnect_max = 0.5\n"
        )
        lab.start()
        lab.wait(lambda m: "mqtt ok" in m.get("STATUS", "") and "live gen 1" in m["STATUS"])
        node = socket.gethostname()
        # the retained status follows the report that STATUS came from (published after it)
        for _ in range(50):
            status = await asyncio.wait_for(
                _retained_status(broker.host, broker.port, f"test/provha/{node}/status"), 30
            )
            if status["generation"] == 1:
                break
        assert status["state"] == "online" and status["generation"] == 1

        # a rebuild request from the master's side
        trig = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "provhad.cli",
            "trigger",
            "--reason",
            "test",
            "--config",
            str(lab.conf),
            cwd=REPO,
        )
        assert await trig.wait() == 0
        lab.wait(lambda m: "STATUS" in m and lab.state()["last_trigger"] == "mqtt")

        # the broker goes away: rebuilds go on, and the status says so
        broker.stop()
        lab.sql(
            "INSERT INTO modem (id, hostname, mac)"
            " VALUES (100076, 'cm-100076', '00:11:22:33:44:76')"
        )
        status_line = lab.wait_status("live gen 2")
        assert "mqtt down" in status_line
        assert "cm-100076" in lab.file("modems-host.conf")
        broker.start()
        lab.sql("UPDATE modem SET public = 1 WHERE id = 100076")
        lab.wait(lambda m: "live gen 3" in m.get("STATUS", "") and "mqtt ok" in m["STATUS"])
        assert lab.stop() == 0
        offline = await asyncio.wait_for(
            _retained_status(broker.host, broker.port, f"test/provha/{node}/status"), 30
        )
        assert offline["state"] == "offline"
    finally:
        broker.stop()


def test_named_and_chrony_reloaded_only_when_their_files_change(lab: DaemonLab) -> None:
    calls = lab.tmp / "reloads.log"
    lab.configure(
        extra=f'\n[services]\nnamed_reload_command = ["sh", "-c", "echo named >> {calls}"]\n'
        f'chrony_reload_command = ["sh", "-c", "echo chrony >> {calls}"]\n'
    )
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    first = calls.read_text().split()
    assert sorted(first) == ["chrony", "named"]  # the first set: both files are new
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100078, 'cm-100078', '00:11:22:33:44:78')"
    )
    lab.wait_status("live gen 2")
    assert calls.read_text().split() == first  # a host changed: only dhcpd
    lab.sql(f"UPDATE provha SET slave_dns_password = '{'bmV3c2xhdmVwYXNzd29yZDE='}'")
    lab.wait_status("live gen 3")
    assert calls.read_text().split() == [*first, "named"]
    lab.sql("UPDATE ippool SET net = '100.96.0.0', netmask = '255.255.254.0' WHERE id = 4")
    lab.wait_status("live gen 4")
    assert calls.read_text().split() == [*first, "named", "chrony"]
    assert lab.stop() == 0


def test_invalid_set_is_reported_once(lab: DaemonLab) -> None:
    over = lab.root / "etc/provhad/templates"
    over.mkdir(parents=True)
    builtin = (REPO / "templates/global.conf.j2").read_text()
    (over / "global.conf.j2").write_text(
        builtin + '{% if base.domain_name == "broken.test" %}this is not dhcpd syntax;\n{% endif %}'
    )
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.sql("UPDATE provbase SET domain_name = 'broken.test'")
    status = lab.wait_status("HELD")
    assert "live gen 1" in status and "rejected the set" in status
    assert lab.proc is not None
    for _ in range(2):  # forced cycles with the same data: held, not validated or logged again
        lab.proc.send_signal(signal.SIGHUP)
        lab.wait(lambda m: m.get("READY") == "1")
    lab.sql("UPDATE provbase SET domain_name = 'nmsprime.test'")
    lab.wait(lambda m: "live gen" in m.get("STATUS", "") and "HELD" not in m["STATUS"])
    assert lab.stop() == 0
    log = lab.output()
    assert log.count("event=rejected") == 1, log
    assert "nmsprime.test" in lab.file("global.conf")


def test_database_outage_later_degrades_then_recovers(lab: DaemonLab, mariadb: MariaDB) -> None:
    lab.configure()
    lab.start(env={"WATCHDOG_USEC": "400000"})
    lab.wait(lambda m: m.get("READY") == "1")
    mariadb.stop()
    try:
        status = lab.wait_status("db DOWN")
        assert "live gen 1" in status  # the live set is kept
        assert "cm-100000" in lab.file("modems-host.conf")
        # the loop still runs: the watchdog keeps being fed during the outage
        lab.wait(lambda m: m.get("WATCHDOG") == "1", timeout=10)
        lab.wait(lambda m: m.get("WATCHDOG") == "1", timeout=10)
        assert lab.alive()
    finally:
        mariadb.start()
    lab.db.admin.connect()  # the old connection died with the server
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100079, 'cm-100079', '00:11:22:33:44:79')"
    )
    status = lab.wait_status("live gen 2")
    assert "db 127.0.0.1" in status and "ok" in status
    assert "cm-100079" in lab.file("modems-host.conf")
    assert lab.stop() == 0


def test_sigusr1_writes_every_threads_stack_and_the_daemon_goes_on(lab: DaemonLab) -> None:
    """The way to see where a daemon that seems stuck is: it works from C, even while the
    event loop is blocked."""
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while "most recent call first" not in lab.output():
        assert time.monotonic() < deadline, lab.output()[-2000:]
        time.sleep(0.05)  # polling the daemon's output file; bounded by the deadline
    assert "provhad/daemon.py" in lab.output()
    assert lab.alive()
    lab.sql(
        "INSERT INTO modem (id, hostname, mac) VALUES (100071, 'cm-100071', '00:11:22:33:44:71')"
    )
    lab.wait_status("live gen 2")
