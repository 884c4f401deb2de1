"""``scripts/demo``: provhad against an embedded database, end to end, on one machine.

Starts a throwaway MariaDB under ``./demo/`` (the project's own folder), loads a sample NMS Prime
network, gives provhad a SELECT-only user, and runs ``provhad render`` for the slave into
``./demo/root``; then prints what was written. Then it starts the daemon (``provhad run``) on the
same database, makes a few scripted changes as the master's GUI would, and shows each rebuild as
it happens (the restart command only runs ``dhcpd -t``: nothing on this machine is restarted).
Running it again starts from scratch.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from provhad import cli, sample
from provhad.testbed import MariaDB, NotifyListener

SCHEMA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schema.sql"


def _tftp_files(db: MariaDB, name: str, tftp: Path, leave_out: int) -> None:
    """Configfiles for every modem and MTA, except a few, so the summary shows the check."""
    with db.admin(name) as conn, conn.cursor() as cur:
        cur.execute("SELECT hostname FROM modem WHERE deleted_at IS NULL ORDER BY id")
        modems = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT id FROM mta WHERE deleted_at IS NULL ORDER BY id")
        mtas = [r[0] for r in cur.fetchall()]
    (tftp / "cm").mkdir(parents=True, exist_ok=True)
    (tftp / "mta").mkdir(parents=True, exist_ok=True)
    for host in modems[leave_out:]:
        (tftp / "cm" / f"{host}.cfg").write_bytes(b"")
    for mta in mtas:
        (tftp / "mta" / f"mta-{mta}.cfg").write_bytes(b"")


def _daemon(db: MariaDB, config: Path, root: Path, work: Path) -> int:
    """provhad run with scripted database changes; each rebuild shows in its log."""
    conf = root / "etc/dhcp-nmsprime/dhcpd.conf"
    with config.open("a") as fh:
        fh.write(
            "\n[watch]\npoll_interval = 0.5\nquiet_period = 0.5\nmin_restart_interval = 5\n"
            "\n[dhcpd]\n# the demo restarts nothing: it only checks what dhcpd would load\n"
            f'restart_command = ["sh", "-c", "dhcpd -t -cf {conf} >/dev/null 2>&1"]\n'
            'check_command = ["true"]\ncheck_attempts = 1\n'
        )
    notify = NotifyListener(work / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
    env.pop("JOURNAL_STREAM", None)
    print(f"\n== provhad run --config {config}   (its log follows)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provhad.cli", "run", "--config", str(config), "--log", "console"],
        env=env,
    )
    try:
        print(f"   READY: {notify.wait(lambda m: 'READY' in m, 120)['STATUS']}")
        with db.admin("nmsprime") as conn, conn.cursor() as cur:
            steps = [
                (
                    "a new modem",
                    "INSERT INTO modem (hostname, mac, contract_id)"
                    " VALUES ('cm-demo', '00:de:00:00:00:01', 1)",
                ),
                (
                    "a pool deactivated",
                    "UPDATE ippool SET active = 0 WHERE id ="
                    " (SELECT id FROM (SELECT MIN(id) AS id FROM ippool WHERE type = 'MTA'"
                    " AND deleted_at IS NULL) AS t)",
                ),
                ("a modem hard-deleted", "DELETE FROM modem WHERE hostname = 'cm-demo'"),
            ]
            for n, (what, sql) in enumerate(steps, start=2):
                print(f"\n== change: {what}\n   {sql}")
                cur.execute(sql)
                conn.commit()
                print(f"   STATUS: {notify.wait_status(f'live gen {n},', 120)}")
            print("\n== change: modem levels written by cacti (a column provhad does not read)")
            cur.execute("UPDATE modem SET us_pwr = 42, updated_at = NOW() LIMIT 100")
            conn.commit()
            print("   no rebuild is expected; a SIGHUP forces one, which changes nothing:")
            proc.send_signal(signal.SIGHUP)
            notify.wait(lambda m: "RELOADING" in m, 120)
            print(f"   READY: {notify.wait(lambda m: 'READY' in m, 120)['STATUS']}")
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
    print("\n== provhad status")
    cli.main(["status", "--config", str(config)])
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--dir", default="demo", help="working folder (default: ./demo)")
    parser.add_argument("--modems", type=int, default=20_000, help="sample size (default 20000)")
    parser.add_argument("--role", choices=["slave", "master"], default="slave")
    parser.add_argument("--no-daemon", action="store_true", help="only render, do not run")
    args = parser.parse_args(argv)

    work = Path(args.dir).resolve()
    if work.exists():
        shutil.rmtree(work)
    root = work / "root"
    print(f"== a throwaway MariaDB under {work}/db")
    with MariaDB(work / "db") as db:
        db.create_database("nmsprime", SCHEMA)
        db.create_readonly_user("nmsprime", "slaveread", "demo-readonly")
        spec = sample.SampleSpec(modems=args.modems)
        with db.admin("nmsprime", local_infile=True) as conn:
            counts = sample.load(conn, spec)
        print("== sample network loaded: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
        _tftp_files(db, "nmsprime", root / "tftpboot", leave_out=3)
        # what the ProvHA installer leaves behind: the OMAPI key made by dnssec-keygen
        dhcp_dir = root / "etc/dhcp-nmsprime"
        dhcp_dir.mkdir(parents=True)
        secret = base64.b64encode(secrets.token_bytes(64)).decode()
        key = dhcp_dir / "Kmy_omapi_key.+157+00001.private"
        key.write_text(f"Private-key-format: v1.3\nAlgorithm: 157 (HMAC_MD5)\nKey: {secret}\n")
        key.chmod(0o600)
        config = work / "provhad.toml"
        config.write_text(
            "# provhad configuration of the demo (see docs/configuration.md)\n"
            "[database]\n"
            f'hosts = ["{db.host}:{db.port}"]\n'
            'user = "slaveread"\n'
            'password = "demo-readonly"\n'
            'name = "nmsprime"\n\n'
            f'[provha]\nown_state = "{args.role}"\n\n'
            f'[paths]\nroot = "{root}"\n\n'
            '[render]\nfqdn = "nmsslave.nmsprime.test"\n'
        )
        print(f"== provhad render --config {config}  (SELECT-only user 'slaveread')\n")
        status = cli.main(["render", "--config", str(config)])
        if status != 0:
            return status
        _show_tree(root)
        if not args.no_daemon:
            status = _daemon(db, config, root, work)
    return status


def _show_tree(root: Path) -> None:
    print("\n== the generated tree")
    for path in sorted(root.rglob("*")):
        if path.is_file() and "tftpboot" not in path.parts:
            print(f"  {path.stat().st_mode & 0o777:04o} {path.stat().st_size:>10} {path}")
    conf = root / "etc/dhcp-nmsprime/dhcpd.conf"
    check = subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, check=False)
    verdict = "accepts" if check.returncode == 0 else "REJECTS"
    print(f"\n== dhcpd -t -cf {conf}: dhcpd {verdict} the written set")


if __name__ == "__main__":
    raise SystemExit(main())
