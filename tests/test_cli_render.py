"""`provhad render` against a real MariaDB (schema.sql, SELECT-only user), end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provhad import sample
from provhad.testbed import MariaDB, ScratchDatabase
from tests import rows

REPO = Path(__file__).resolve().parent.parent


def provhad(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "provhad.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=300,
    )


def write_config(path: Path, db: ScratchDatabase, *, extra: str = "", role: str = "slave") -> Path:
    path.write_text(
        f"""
[database]
hosts = ["{db.host}:{db.port}"]
user = "{db.ro_user}"
password = "{db.ro_password}"
name = "{db.name}"

[provha]
own_state = "{role}"

[render]
fqdn = "nmsslave.nmsprime.test"
{extra}
"""
    )
    return path


def insert(db: ScratchDatabase, table: str, row: dict[str, object]) -> None:
    cols = ", ".join(f"`{c}`" for c in row)
    marks = ", ".join(["%s"] * len(row))
    with db.admin.cursor() as cur:
        cur.execute(f"INSERT INTO `{table}` ({cols}) VALUES ({marks})", list(row.values()))


def seed_small(db: ScratchDatabase) -> None:
    snap = rows.small()
    insert(db, "provha", snap.provha[0])
    insert(db, "provbase", snap.provbase[0])
    insert(db, "provvoip", snap.provvoip[0])
    for gw in snap.netgw:
        insert(db, "netgw", {**gw, "type": "cmts"})
    insert(db, "netgw", {"id": 3, "hostname": "bras-1", "type": "bras"})
    insert(db, "netgw", {"id": 4, "hostname": "old", "type": "cmts", "deleted_at": "2021-01-01"})
    for p in snap.ippool:
        insert(db, "ippool", p)
    insert(
        db, "ippool", rows.pool(7, 4, "CM", "10.9.0.0", "/24", "10.9.0.9", "10.9.0.99", "10.9.0.1")
    )
    for m in snap.modem:
        insert(db, "modem", m)
    insert(db, "modem", rows.modem(100050, "00:11:22:33:44:50", deleted_at="2021-01-01"))
    for t in snap.mta:
        insert(db, "mta", t)
    for e in snap.endpoint:
        insert(
            db,
            "endpoint",
            {k: v for k, v in e.items() if k != "modemmac"}
            | {"modem_id": 100000 if e["id"] == 200000 else 100001},
        )


def test_render_small_database(nmsdb: ScratchDatabase, tmp_path: Path) -> None:
    seed_small(nmsdb)
    conf = write_config(tmp_path / "provhad.toml", nmsdb)
    root = tmp_path / "root"
    proc = provhad("render", "--config", conf, "--root", root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "2 CMTS, 5 pools, 3 modems, 1 MTAs, 2 endpoints, 1 public, 1 blocked" in out
    assert "validated (dhcpd -t, named-checkconf, chronyd -p, sh -n): ok; generation 1" in out
    assert "rejected rows: 0" in out
    dhcp = root / "etc/dhcp-nmsprime"
    assert sorted(p.name for p in (dhcp / "cmts_gws").iterdir()) == ["1.conf", "2.conf"]
    assert "cm-100050" not in (dhcp / "modems-host.conf").read_text()  # soft-deleted
    check = subprocess.run(["dhcpd", "-t", "-cf", str(dhcp / "dhcpd.conf")], capture_output=True)
    assert check.returncode == 0
    # a second run changes nothing
    again = provhad("render", "--config", conf, "--root", root)
    assert again.returncode == 0
    assert "unchanged: the live set is exactly this one (generation 1, 17 files)" in again.stdout


def test_bad_rows_are_reported_and_the_rest_renders(nmsdb: ScratchDatabase, tmp_path: Path) -> None:
    seed_small(nmsdb)
    insert(nmsdb, "modem", rows.modem(100060, "00:11:22:33:44:60", hostname="evil; deny booting"))
    insert(
        nmsdb,
        "ippool",
        rows.pool(8, 2, "CPEPriv", "100.64.1.0", "/24", "100.64.2.1", "100.64.2.9", "100.64.1.1"),
    )
    insert(
        nmsdb,
        "ippool",
        rows.pool(
            9,
            2,
            "MTA",
            "100.96.1.0",
            "/24",
            "100.96.1.10",
            "100.96.1.20",
            "100.96.1.1",
            optional="option no-such-option 1;",
        ),
    )
    insert(nmsdb, "endpoint", {"id": 200005, "hostname": "cpe-x", "mac": "zz", "modem_id": 100000})
    conf = write_config(tmp_path / "provhad.toml", nmsdb)
    proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rejected rows: 4" in proc.stdout
    for line in [
        "  endpoint id 200005: mac 'zz' is not a MAC address",
        "  ippool id 8: range 100.64.2.1-100.64.2.9 is outside subnet 100.64.1.0/24",
        "  ippool id 9: optional statements rejected by dhcpd:",
        "  modem id 100060: hostname 'evil; deny booting' is not a valid DNS label",
    ]:
        assert line in proc.stdout, proc.stdout
    hosts = (tmp_path / "root/etc/dhcp-nmsprime/modems-host.conf").read_text()
    assert "cm-100000" in hosts and "evil" not in hosts


def test_read_only_user_suffices(nmsdb: ScratchDatabase, tmp_path: Path) -> None:
    seed_small(nmsdb)
    with nmsdb.admin.cursor() as cur:
        cur.execute("SHOW GRANTS FOR %s@'127.0.0.1'", (nmsdb.ro_user,))
        grants = " ".join(r[0] for r in cur.fetchall())
    assert "SELECT" in grants and "INSERT" not in grants and "ALL" not in grants
    proc = provhad(
        "render", "--config", write_config(tmp_path / "c.toml", nmsdb), "--root", tmp_path / "root"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_master_role(nmsdb: ScratchDatabase, tmp_path: Path) -> None:
    seed_small(nmsdb)
    conf = write_config(tmp_path / "provhad.toml", nmsdb, role="master")
    proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    failover = (tmp_path / "root/etc/dhcp-nmsprime/failover.conf").read_text()
    assert "\tprimary;\n\taddress 172.20.0.1;" in failover and "split 128;" in failover


def test_sample_network(mariadb: MariaDB, schema_sql: Path, tmp_path: Path) -> None:
    spec = sample.SampleSpec(modems=3000, modems_per_cmts=1000, seed=7)
    with mariadb.scratch(schema_sql, prefix="render") as db:
        with mariadb.admin(db.name, local_infile=True) as conn:
            counts = sample.load(conn, spec)
        conf = write_config(tmp_path / "provhad.toml", db)
        proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 CMTS" in proc.stdout and "rejected rows: 0" in proc.stdout, proc.stdout
    hosts = (tmp_path / "root/etc/dhcp-nmsprime/modems-host.conf").read_text().count("\n")
    assert 0.98 * 3000 < hosts < counts["modem"]


def test_env_file_fallback(nmsdb: ScratchDatabase, tmp_path: Path) -> None:
    seed_small(nmsdb)
    root = tmp_path / "root"
    env = root / "etc/nmsprime/env"
    env.mkdir(parents=True)
    (env / "global.env").write_text(
        "APP_TIMEZONE=Europe/Berlin\n"
        f"DB_HOST=203.0.113.99,{nmsdb.host}\nDB_PORT={nmsdb.port}\n"
        f"DB_DATABASE={nmsdb.name}\nDB_USERNAME={nmsdb.ro_user}\n"
        f'DB_PASSWORD="{nmsdb.ro_password}"\n'
    )
    (env / "provha.env").write_text("PROVHA__OWN_STATE=slave\nSLAVE_SSH_PORT=22\n")
    conf = tmp_path / "c.toml"
    conf.write_text(
        "[database]\nconnect_timeout = 1\n".replace("[database]\n", "[render]\n").replace(
            "connect_timeout = 1", 'fqdn = "nmsslave.nmsprime.test"'
        )
    )
    proc = provhad("render", "--config", conf, "--root", root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"snapshot from {nmsdb.host}:{nmsdb.port}" in proc.stdout
    assert "\tsecondary;" in (root / "etc/dhcp-nmsprime/failover.conf").read_text()


def test_database_unreachable(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[database]\nhosts = ["127.0.0.1:1", "127.0.0.1:2"]\nconnect_timeout = 2\n'
        '[provha]\nown_state = "slave"\n'
    )
    proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
    assert proc.returncode == 1
    assert "no database node delivered a snapshot: 127.0.0.1:1: " in proc.stdout
    assert "127.0.0.1:2: " in proc.stdout
    assert not (tmp_path / "root/etc").exists()


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[database]\nhosts = 5\n", "database.hosts: must be a non-empty list"),
        ("[database]\nport = 3306\n", "database.port: unknown key"),
        ('[provha]\nown_state = "backup"\n', "provha.own_state: 'backup' is not one of"),
        ('[paths]\nroot = "relative"\n', "paths.root: must be an absolute path"),
        ('[render]\ntimezone = "Mars/Base"\n', "render.timezone: unknown time zone"),
        ("[validate]\ntimeout = -1\n", "validate.timeout: must be greater than 0"),
        ("[extra]\n", "extra: unknown section"),
        ("[render]\ndefault_network_prefix = 40\n", "must be between 8 and 30"),
        ("[mqtt]\nport = 0\n", "mqtt.port: must be between 1 and 65535"),
        ("[dhcpd]\nrestart_command = []\n", "dhcpd.restart_command: must name a command"),
        ('[render]\nfqdn = "a\\"b"\n', "render.fqdn: "),
        ('[database]\nhosts = ["db;1"]\n', 'is not "host" or "host:port"'),
        ("[database\n", "invalid TOML"),
        ("[watch]\nmax_poll_share = 1.5\n", "watch.max_poll_share: 1.5 is not a share"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, expect: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"provhad: configuration error: {conf}: ")
    assert expect in proc.stderr
    assert proc.stderr.count("\n") == 1  # one clear line


def test_missing_env_files_are_named(tmp_path: Path) -> None:
    proc = provhad("render", "--root", tmp_path)
    assert proc.returncode == 2
    assert "etc/nmsprime/env/provha.env" in proc.stderr and "missing" in proc.stderr


def test_help_lists_render() -> None:
    proc = provhad("render", "--help")
    assert proc.returncode == 0 and "--root DIR" in proc.stdout and "--config FILE" in proc.stdout


def test_bracketed_ipv6_hosts() -> None:
    from provhad.config import DatabaseConfig

    cfg = DatabaseConfig(hosts=("[2001:db8::1]", "[2001:db8::2]:3307", "db1", "db2:3308"))
    assert cfg.endpoints() == [
        ("2001:db8::1", 3306),
        ("2001:db8::2", 3307),
        ("db1", 3306),
        ("db2", 3308),
    ]


def test_every_key_is_documented_and_in_the_example() -> None:
    import dataclasses
    import re

    from provhad import config

    repo = Path(__file__).resolve().parent.parent
    docs = (repo / "docs/configuration.md").read_text()
    example = (repo / "systemd/provhad.toml").read_text()
    for section, cls in config._SECTIONS.items():
        part = docs.split(f"## `[{section}]`", 1)
        assert len(part) == 2, f"docs/configuration.md has no [{section}] section"
        body = part[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in body, f"[{section}] {f.name} is not documented"
            assert re.search(rf"^#? ?{f.name} *=", example, re.M), f"{f.name} not in the example"
