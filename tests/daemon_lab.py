"""A real `provhad run` process for tests: its notify socket, restart log and files."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provhad.testbed import NotifyListener, ScratchDatabase, TestbedError

REPO = Path(__file__).resolve().parent.parent


@dataclass
class DaemonLab:
    tmp: Path
    db: ScratchDatabase
    root: Path = field(init=False)
    conf: Path = field(init=False)
    restarts: Path = field(init=False)
    notify: NotifyListener = field(init=False)
    proc: subprocess.Popen[str] | None = None

    def __post_init__(self) -> None:
        self.root = self.tmp / "root"
        self.conf = self.tmp / "provhad.toml"
        self.restarts = self.tmp / "restarts.log"
        self.notify = NotifyListener(self.tmp / "notify.sock")
        restart = self.tmp / "restart.sh"
        restart.write_text(
            "#!/bin/sh\n"
            f"echo restart >> {self.restarts}\n"
            f"exec dhcpd -t -cf {self.root}/etc/dhcp-nmsprime/dhcpd.conf > /dev/null 2>&1\n"
        )
        check = self.tmp / "check.sh"
        check.write_text(
            "#!/bin/sh\n"
            f"if [ -e {self.tmp}/fail-checks ]; then exit 3; fi\n"
            f"if [ -e {self.tmp}/fail-next-check ]; then\n"
            f"  rm {self.tmp}/fail-next-check; exit 3\n"
            "fi\n"
        )
        for script in (restart, check):
            script.chmod(0o755)

    def configure(
        self, extra: str = "", min_restart_interval: float = 0, max_shrink_percent: float = 100
    ) -> None:
        d = self.db
        self.conf.write_text(f"""
[database]
hosts = ["{d.host}:{d.port}"]
user = "{d.ro_user}"
password = "{d.ro_password}"
name = "{d.name}"
connect_timeout = 2

[provha]
own_state = "slave"

[paths]
root = "{self.root}"

[render]
fqdn = "nmsslave.nmsprime.test"

[watch]
poll_interval = 0.2
quiet_period = 0.3
max_delay = 3
min_restart_interval = {min_restart_interval}

[safety]
max_shrink_percent = {max_shrink_percent}

[dhcpd]
restart_command = ["{self.tmp}/restart.sh"]
check_command = ["{self.tmp}/check.sh"]
check_attempts = 1
{extra}
""")

    def start(self, env: dict[str, str] | None = None) -> None:
        full = dict(os.environ)
        full.pop("JOURNAL_STREAM", None)
        full.update({"NOTIFY_SOCKET": str(self.notify.path), **(env or {})})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "provhad.cli",
                "run",
                "--config",
                str(self.conf),
                "--log",
                "plain",
            ],
            cwd=REPO,
            env=full,
            # a file, not a pipe: nobody reads a pipe while the test runs, and a full one
            # would block the daemon
            stdout=(self.tmp / "daemon.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, pred: Callable[[dict[str, str]], bool], timeout: float = 60) -> dict[str, str]:
        try:
            return self.notify.wait(pred, timeout, self.alive)
        except TestbedError as exc:
            if not self.alive():
                raise AssertionError(f"{exc}\n--- daemon output ---\n{self.output()}") from None
            raise

    def wait_status(self, text: str, timeout: float = 60) -> str:
        return self.wait(lambda m: text in m.get("STATUS", ""), timeout)["STATUS"]

    def wait_restarts(self, n: int, timeout: float = 60) -> None:
        """Until dhcpd was restarted ``n`` times in all and runs the live files (the
        supervisor restarts beside the main loop, after the STATUS of the publish)."""

        def settled(_: dict[str, str]) -> bool:
            return self.restart_count() >= n and not self.state()["restart_pending"]

        self.wait(settled, timeout)
        assert self.restart_count() == n, (self.restart_count(), n)

    def state(self) -> dict[str, object]:
        """The daemon's state file."""
        return json.loads((self.root / "var/lib/provhad/state.json").read_text())  # type: ignore[no-any-return]

    def restart_count(self) -> int:
        return len(self.restarts.read_text().splitlines()) if self.restarts.exists() else 0

    def sql(self, statement: str) -> None:
        with self.db.admin.cursor() as cur:
            cur.execute(statement)

    def file(self, name: str) -> str:
        return (self.root / "etc/dhcp-nmsprime" / name).read_text()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the daemon did not stop within 60 s of SIGTERM\n--- daemon output ---\n"
                f"{self.output()}"
            ) from None
        finally:
            self.notify.drain()
            self.notify.close()

    def output(self) -> str:
        return (self.tmp / "daemon.log").read_text()


class Gate:
    """Parks the daemon inside a command (dhcpd's validation by default) until released,
    without polling.

    A wrapper around dhcpd writes to ``inside`` and then blocks reading ``release`` while the
    file ``hold`` exists. The test keeps ``release`` open read-write, so its "go" stays buffered
    whenever the wrapper gets to read it.
    """

    def __init__(self, tmp: Path, target: str = "dhcpd") -> None:
        self.hold = tmp / "hold"
        self.inside = tmp / "inside.fifo"
        self.release = tmp / "release.fifo"
        os.mkfifo(self.inside)
        os.mkfifo(self.release)
        self.release_fd = os.open(self.release, os.O_RDWR)
        self.inside_fd = os.open(self.inside, os.O_RDWR | os.O_NONBLOCK)
        self.wrapper = tmp / "dhcpd-gated.sh"
        self.wrapper.write_text(
            "#!/bin/sh\n"
            f"if [ -e {self.hold} ]; then\n"
            f"  echo in > {self.inside}\n"
            f"  read line < {self.release}\n"
            "fi\n"
            f'exec {target} "$@"\n'
        )
        self.wrapper.chmod(0o755)

    def close_next(self) -> None:
        self.hold.touch()

    def wait_inside(self, timeout: float = 60) -> float:
        """Block until the daemon is parked; returns the monotonic time it arrived."""
        ready, _, _ = select.select([self.inside_fd], [], [], timeout)
        assert ready, "the daemon did not reach its validation"
        os.read(self.inside_fd, 100)
        return time.monotonic()

    def open(self) -> None:
        self.hold.unlink()
        os.write(self.release_fd, b"go\n")

    def close(self) -> None:
        os.close(self.release_fd)
        os.close(self.inside_fd)
