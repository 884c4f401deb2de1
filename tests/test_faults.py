"""`provhad run` on the fault paths an HA slave exists for (issue 10), real process, real
MariaDB and dhcpd -t; the pacing under test is the operator's default wherever it matters."""

from __future__ import annotations

import contextlib
import signal
import time

import pymysql

from provhad.config import WatchConfig
from tests.daemon_lab import DaemonLab, Gate
from tests.test_cli_render import provhad

GENERATED = (
    "etc/dhcp-nmsprime/dhcpd.conf",
    "etc/dhcp-nmsprime/modems-host.conf",
    "etc/named-nmsprime.d/dhcpupdate.key",
    "etc/chrony-nmsprime.d/nmsprime.conf",
)


def add_modem(lab: DaemonLab, n: int) -> None:
    mac = f"00:11:22:33:{n >> 8 & 255:02x}:{n & 255:02x}"
    lab.sql(f"INSERT INTO modem (id, hostname, mac) VALUES ({n}, 'cm-{n}', '{mac}')")


def test_first_install_dhcpd_failure_deletes_nothing_and_retries(lab: DaemonLab) -> None:
    """Item 3: with nothing older on disk, a dhcpd that does not come up leaves the new set in
    place (no "rollback" by deletion), is reported, and is retried with backoff."""
    lab.configure()
    (lab.tmp / "fail-checks").touch()
    lab.start()
    status = lab.wait_status("dhcpd restart FAILED", timeout=60)
    assert "live gen 1" in status
    for rel in GENERATED:
        assert (lab.root / rel).stat().st_size > 0, rel
    assert lab.state()["rollbacks"] == 0
    lab.wait(lambda m: lab.restart_count() >= 2, timeout=30)  # retried, after a pause
    (lab.tmp / "fail-checks").unlink()
    lab.wait(lambda m: "FAILED" not in m.get("STATUS", "FAILED"), timeout=60)
    s = lab.state()
    assert s["restart_pending"] is False and s["dhcpd_last_restart_ok"] is True
    assert s["dhcpd_running_generation"] == 1
    assert lab.stop() == 0


def test_rollback_goes_back_to_what_dhcpd_ran(lab: DaemonLab) -> None:
    """Item 3: gen 2 (modems-host.conf) waits for the default restart interval, gen 3
    (blocked.conf) comes meanwhile, the restart fails: both files are gen 1's again."""
    lab.configure(min_restart_interval=WatchConfig().min_restart_interval)
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: lab.state()["restart_pending"] is False)
    gen1 = {n: lab.file(n) for n in ("modems-host.conf", "blocked.conf")}
    add_modem(lab, 100090)
    assert "dhcpd restart pending" in lab.wait_status("live gen 2")
    lab.sql("UPDATE modem SET internet_access = 0 WHERE id = 100001")
    lab.wait_status("live gen 3")
    assert lab.file("blocked.conf") != gen1["blocked.conf"]
    (lab.tmp / "fail-next-check").touch()
    status = lab.wait_status("HELD", timeout=WatchConfig().min_restart_interval + 30)
    assert "rolled back" in status
    for name, text in gen1.items():
        assert lab.file(name) == text, name
    s = lab.state()
    assert s["rollbacks"] == 1 and s["restart_pending"] is False
    assert s["dhcpd_last_restart_ok"] is True
    assert lab.stop() == 0


def test_render_while_stopped_gets_dhcpd_restarted_at_start(lab: DaemonLab) -> None:
    """Item 4: a set published by `provhad render` while the daemon was stopped is what
    dhcpd must run: the next start restarts it, whatever the state file said."""
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: lab.state()["restart_pending"] is False)
    assert lab.stop() == 0
    before = lab.restart_count()
    add_modem(lab, 100091)
    out = provhad("render", "--config", lab.conf)
    assert out.returncode == 0, out.stdout + out.stderr
    lab.notify = type(lab.notify)(lab.tmp / "notify2.sock")
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: lab.restart_count() == before + 1 and not lab.state()["restart_pending"])
    assert "cm-100091" in lab.file("modems-host.conf")
    assert lab.stop() == 0


def test_render_beside_the_daemon_refuses(lab: DaemonLab) -> None:
    """Item 12: one writer at a time."""
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    add_modem(lab, 100092)
    out = provhad("render", "--config", lab.conf)
    assert out.returncode == 1
    assert "provhad run" in out.stdout + out.stderr
    assert lab.stop() == 0


def test_loop_goes_on_while_dhcpd_restarts(lab: DaemonLab) -> None:
    """Item 11: while a restart hangs, polling, reporting and the watchdog go on, and what
    changed meanwhile is published after it."""
    gate = Gate(lab.tmp, target=str(lab.tmp / "restart.sh"))
    lab.configure()
    lab.conf.write_text(
        lab.conf.read_text().replace(f'"{lab.tmp}/restart.sh"', f'"{gate.wrapper}"')
    )
    lab.start(env={"WATCHDOG_USEC": "2000000"})
    lab.wait(lambda m: m.get("READY") == "1")
    lab.wait(lambda m: lab.state()["restart_pending"] is False)
    gate.close_next()
    add_modem(lab, 100093)
    parked = gate.wait_inside()
    # a pool change while dhcpd restarts: the loop is not stuck behind the restart
    lab.sql("UPDATE ippool SET dns1_ip = '10.0.0.53' WHERE id = 1")
    pings = 0
    while time.monotonic() - parked < 4:
        msg = lab.notify.read(1.0)
        if msg is not None and msg.get("WATCHDOG") == "1":
            pings += 1
    assert pings >= 2, "the watchdog starved while dhcpd restarted"
    gate.open()
    lab.wait(lambda m: "10.0.0.53" in lab.file("cmts_gws/1.conf"), timeout=30)
    lab.wait(lambda m: lab.state()["restart_pending"] is False, timeout=60)
    assert lab.stop() == 0
    gate.close()


def test_validator_that_cannot_run_is_reported_not_fatal(lab: DaemonLab) -> None:
    """Item 9: a PermissionError from a validator must not end the daemon."""
    bad = lab.tmp / "dhcpd-not-executable"
    bad.write_text("#!/bin/sh\nexit 0\n")
    lab.configure(extra=f'\n[validate]\ndhcpd = "{bad}"\n')
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    status = lab.wait_status("FAILED")
    assert lab.alive()
    assert "no live set" in status or "live gen" not in status
    bad.chmod(0o755)
    lab.wait_status("live gen 1", timeout=60)  # retried without any change of the data
    assert lab.stop() == 0


def test_second_sigterm_forces_the_exit(lab: DaemonLab) -> None:
    """Item 13: like uvicorn, a second SIGTERM does not wait for the cycle to end."""
    gate = Gate(lab.tmp)
    lab.configure(extra=f'\n[validate]\ndhcpd = "{gate.wrapper}"\n')
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    gate.close_next()
    add_modem(lab, 100094)
    gate.wait_inside()
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGTERM)
    lab.wait(lambda m: m.get("STOPPING") == "1" or "stop_requested" in lab.output(), timeout=10)
    lab.proc.send_signal(signal.SIGTERM)
    try:
        code = lab.proc.wait(timeout=10)
    finally:
        gate.open()
        gate.close()
    assert code != 0
    assert "forced_exit" in lab.output()


def test_sighup_applies_a_rotated_database_password(lab: DaemonLab) -> None:
    """Item 7: after SIGHUP the poller uses the new credentials too."""
    lab.configure()
    lab.start()
    lab.wait(lambda m: m.get("READY") == "1")
    d = lab.db
    for host in ("127.0.0.1", "localhost"):
        lab.sql(f"ALTER USER '{d.ro_user}'@'{host}' IDENTIFIED BY 'rotated-pw'")
    lab.conf.write_text(
        lab.conf.read_text().replace(f'password = "{d.ro_password}"', 'password = "rotated-pw"')
    )
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGHUP)
    lab.wait(lambda m: m.get("READY") == "1")
    # drop every connection of the read-only user: the poller must log in again
    with d.admin.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (d.ro_user,))
        for (pid,) in cur.fetchall():
            with contextlib.suppress(pymysql.err.MySQLError):  # gone already
                cur.execute(f"KILL CONNECTION {int(pid)}")
    add_modem(lab, 100095)
    lab.wait_status("live gen 2", timeout=30)
    assert "db DOWN" not in lab.wait_status("live gen 2")
    assert lab.stop() == 0
