"""provhad installed and operated on a Debian 12 machine with a real systemd as PID 1.

The machine (tests/container.py) boots on a cached root file system with an NMS Prime slave's
services: MariaDB, isc-dhcp-server, named, chrony. The test follows docs/install.md: it runs
scripts/install-slave (which installs the build prerequisites and builds the venv from PyPI),
seeds the database, edits the configuration, starts the unit and checks what an operator sees.
It needs root (systemd-nspawn); a machine that cannot boot a container fails here, with the
reason, instead of skipping.

The steps are one module-scoped machine and tests in the order an operator meets them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.container import CACHE_DIR, HOST_CA_BUNDLE, Machine, booted

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
SRC = "/root/provhad"  # the checkout inside the machine
CONFIG = "/etc/provhad/provhad.toml"
DHCPD = "isc-dhcp-server.service"
SLAVE_IP = "172.20.0.2"  # provhad.sample.SLAVE_IP
#: how long STATUS and `provhad check` may take to follow a database outage or recovery: the
#: default poll interval (2 s) plus a connect timeout (5 s) plus slack for a loaded host
FOLLOW_TIMEOUT = 30.0


def until(what: str, get: Callable[[], T], ok: Callable[[T], bool], timeout: float) -> T:
    """Poll an observable outside the test's control (a unit's STATUS, a command's result)
    until ``ok`` holds for it; fail with the last value seen otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last: {value!r}")
        time.sleep(0.2)


def checkout_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


@pytest.fixture(scope="module")
def slave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """The machine, with this checkout in /root/provhad and provhad installed and running."""
    src = tmp_path_factory.mktemp("src")
    for f in checkout_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((REPO / f).read_bytes())
        (src / f).chmod((REPO / f).stat().st_mode)
    caches = {
        # the build prerequisites' packages and pip's wheels survive the machine
        "/var/cache/apt/archives": CACHE_DIR / "apt-archives",
        "/root/.cache/pip": CACHE_DIR / "pip",
    }
    files = {SRC: src, "/etc/ssl/certs/ca-certificates.crt": HOST_CA_BUNDLE}
    with booted("phslave", files=files, binds=caches) as machine:
        install(machine)
        yield machine


def install(m: Machine) -> None:
    """docs/install.md on Debian 12, step by step."""
    # the sample network's slave address (its failover peer is the absent master): dhcpd
    # serves the interface that holds it
    m.sh(f"ip addr add {SLAVE_IP}/22 dev host0")
    out = m.run(f"{SRC}/scripts/install-slave", "--dhcpd-interfaces", "host0", timeout=900)
    # a fresh machine has no compiler: the script installed what systemd-python's build needs
    assert "installing the build prerequisites: apt-get install" in out.stderr, out.stderr
    assert "installed provhad " in out.stderr
    assert m.sh("command -v provhad") == "/usr/local/bin/provhad\n"

    # the slave's database: NMS Prime's schema, a sample network, a SELECT-only user
    m.sh(
        "mysql -e 'CREATE DATABASE nmsprime'\n"
        f"/opt/provhad/venv/bin/python -m provhad.sample --socket /run/mysqld/mysqld.sock"
        f" --database nmsprime --schema {SRC}/tests/fixtures/schema.sql --modems 200\n"
        "mysql -e \"CREATE USER 'slaveread'@'127.0.0.1' IDENTIFIED BY 'ro-secret';"
        " GRANT SELECT ON nmsprime.* TO 'slaveread'@'127.0.0.1'\"",
        timeout=300,
    )
    # step 3: the configuration
    m.sh(
        f"sed -i -e 's/^hosts = .*/hosts = [\"127.0.0.1:3306\"]/'"
        f' -e \'s/^password = "change-me"/password = "ro-secret"/\' {CONFIG}'
    )
    m.sh(f"runuser -u provhad -- provhad render --config {CONFIG} --root /var/lib/provhad/try")
    m.sh("rm -r /var/lib/provhad/try")
    # step 6
    m.run("systemctl", "enable", "--now", "provhad", timeout=300)


def matches(pattern: str) -> Callable[[str], bool]:
    return lambda text: re.search(pattern, text) is not None


def has(part: str) -> Callable[[str], bool]:
    return lambda text: part in text


def status_text(m: Machine) -> str:
    return m.run("systemctl", "show", "-P", "StatusText", "provhad").stdout.strip()


def test_install_wrote_debians_settings(slave: Machine) -> None:
    config = slave.sh(f"cat {CONFIG}")
    assert f'restart_command = ["systemctl", "restart", "{DHCPD}"]' in config
    assert 'chrony_reload_command = ["systemctl", "try-restart", "chrony.service"]' in config
    assert 'named_checkconf = "/usr/bin/named-checkconf"' in config
    defaults = slave.sh("cat /etc/default/isc-dhcp-server")
    assert 'DHCPDv4_CONF="/etc/dhcp-nmsprime/dhcpd.conf"' in defaults
    assert 'INTERFACESv4="host0"' in defaults
    # a second run is an upgrade: no options repeated, the configuration kept
    out = slave.run(f"{SRC}/scripts/install-slave", timeout=600)
    assert "reusing the options of the last install" in out.stderr
    assert "kept the existing /etc/provhad/provhad.toml" in out.stderr
    assert 'INTERFACESv4="host0"' in slave.sh("cat /etc/default/isc-dhcp-server")


def test_status_line_shows_the_live_generation(slave: Machine) -> None:
    text = until("STATUS live gen", lambda: status_text(slave), has("live gen"), FOLLOW_TIMEOUT)
    assert "db 127.0.0.1:3306 ok" in text, text
    shown = slave.run("systemctl", "status", "--no-pager", "provhad", check=False).stdout
    assert "Active: active (running)" in shown
    assert f'Status: "{text}' in shown


def test_journal_has_the_published_event_with_its_fields(slave: Machine) -> None:
    out = slave.sh("journalctl -u provhad PROVHAD_EVENT=published -o json --no-pager")
    entries = [json.loads(line) for line in out.splitlines()]
    assert entries, "no published event in the journal"
    first = entries[0]
    assert first["PROVHAD_EVENT"] == "published"
    assert first["_SYSTEMD_UNIT"] == "provhad.service"
    assert first["_UID"] == slave.sh("id -u provhad").strip()
    assert len([k for k in first if k.startswith("PROVHAD_")]) > 1  # the structured fields


def test_polkit_lets_provhad_restart_dhcpd_and_nothing_else(slave: Machine) -> None:
    # provhad published and restarted the real dhcpd unit through polkit
    assert slave.run("systemctl", "is-active", DHCPD, check=False).stdout.strip() == "active"
    assert "dhcpd.conf" in slave.sh("ls /etc/dhcp-nmsprime")
    as_provhad = ["runuser", "-u", "provhad", "--", "systemctl"]
    allowed = slave.run(*as_provhad, "restart", DHCPD, check=False)
    assert allowed.returncode == 0, allowed.stderr
    for verb, unit in (("stop", DHCPD), ("restart", "mariadb.service"), ("stop", "chrony.service")):
        refused = slave.run(*as_provhad, verb, unit, check=False)
        assert refused.returncode != 0, (verb, unit)
        assert "Interactive authentication required" in refused.stderr, refused.stderr
    assert slave.run("systemctl", "is-active", DHCPD, check=False).stdout.strip() == "active"


def test_dhcpd_starts_without_omapi_host_records(slave: Machine) -> None:
    """Issue 12: the drop-in strips host records from the lease file before every start of
    the real (sysv-generated) dhcpd unit, whoever starts it; leases stay."""
    dropins = slave.run("systemctl", "show", "-P", "DropInPaths", DHCPD).stdout
    assert f"/etc/systemd/system/{DHCPD}.d/provhad.conf" in dropins
    leases = "/var/lib/dhcp/dhcpd.leases"
    slave.sh(f"printf 'host stale-omapi {{\n  dynamic;\n  deleted;\n}}\n' >> {leases}")
    slave.run("systemctl", "restart", DHCPD, timeout=120)
    assert slave.run("systemctl", "is-active", DHCPD, check=False).stdout.strip() == "active"
    assert "stale-omapi" not in slave.sh(f"cat {leases}")


def test_reload_rereads_the_configuration(slave: Machine) -> None:
    pid = slave.run("systemctl", "show", "-P", "MainPID", "provhad").stdout.strip()
    slave.run("systemctl", "reload", "provhad", timeout=120)
    until(
        "config_reloaded in the journal",
        lambda: slave.sh("journalctl -u provhad PROVHAD_EVENT=config_reloaded -o cat"),
        bool,
        FOLLOW_TIMEOUT,
    )
    assert slave.run("systemctl", "show", "-P", "MainPID", "provhad").stdout.strip() == pid
    until("STATUS after the reload", lambda: status_text(slave), has("live gen"), FOLLOW_TIMEOUT)


def test_database_outage_and_recovery_show_within_seconds(slave: Machine) -> None:
    # the sample network has no TFTP configfiles, so the verdict before is WARNING: the one
    # after the outage must be the same again
    before = provhad_check(slave)
    assert before.returncode in (0, 1), before.stdout
    # Debian's mariadb.socket would start the server again at provhad's next connection
    slave.run("systemctl", "stop", "mariadb.socket", "mariadb.service", timeout=120)
    down = until("STATUS db DOWN", lambda: status_text(slave), has("db DOWN"), FOLLOW_TIMEOUT)
    assert "live gen" in down  # the last good set stays
    check = until(
        "provhad check CRITICAL",
        lambda: provhad_check(slave),
        lambda c: c.returncode == 2,
        FOLLOW_TIMEOUT,
    )
    assert check.stdout.startswith("PROVHAD CRITICAL"), check.stdout
    assert slave.run("systemctl", "is-active", DHCPD, check=False).stdout.strip() == "active"

    slave.run("systemctl", "start", "mariadb.socket", "mariadb.service", timeout=120)
    until("STATUS db ok", lambda: status_text(slave), matches(r"\bdb \S+ ok\b"), FOLLOW_TIMEOUT)
    after = until(
        "provhad check as before the outage",
        lambda: provhad_check(slave),
        lambda c: c.returncode == before.returncode,
        FOLLOW_TIMEOUT,
    )
    assert after.stdout.split("|")[0] == before.stdout.split("|")[0], after.stdout


def provhad_check(m: Machine) -> subprocess.CompletedProcess[str]:
    return m.run("provhad", "check", "--config", CONFIG, check=False)


def test_watchdog_silent_and_clean_stop(slave: Machine) -> None:
    assert slave.run("systemctl", "show", "-P", "NRestarts", "provhad").stdout.strip() == "0"
    journal = slave.sh("journalctl -u provhad --no-pager -o cat")
    assert "Watchdog timeout" not in journal
    assert "watchdog_starved" not in slave.sh("journalctl -u provhad -o verbose --no-pager")
    slave.run("systemctl", "stop", "provhad", timeout=240)
    show = slave.sh("systemctl show -p Result -p ExecMainStatus -p ActiveState provhad")
    assert dict(ln.split("=", 1) for ln in show.splitlines()) == {
        "Result": "success",
        "ExecMainStatus": "0",
        "ActiveState": "inactive",
    }
    stopped = provhad_check(slave)
    assert stopped.returncode == 2 and "not running" in stopped.stdout, stopped.stdout
