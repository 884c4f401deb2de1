"""Bounded commands: a hanging restart command dies with everything it started."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from provhad import services


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ", 1)[1][0] != "Z"


async def test_hanging_command_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    outcome = await services.run(["sh", "-c", script], timeout=1.0)
    assert time.monotonic() - started < 10
    assert not outcome.ok and outcome.timed_out
    assert "timed out" in outcome.describe()
    child = int(pidfile.read_text())
    assert not alive(child)  # the grandchild went with the group


async def test_outcome_of_failing_and_missing_commands() -> None:
    bad = await services.run(["sh", "-c", "echo broken config >&2; exit 3"], timeout=10)
    assert not bad.ok and bad.returncode == 3 and bad.describe() == "exit 3: broken config"
    missing = await services.run(["/nonexistent/systemctl"], timeout=10)
    assert not missing.ok and "nonexistent" in missing.output


async def test_children_do_not_inherit_the_notify_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    script = "echo ${NOTIFY_SOCKET:-none} ${WATCHDOG_USEC:-none} ${HOME:-nohome}"
    out = await services.run(["sh", "-c", script], 10)
    # systemd's per-service variables are gone, the rest of the environment is passed on
    assert out.output.split()[:2] == ["none", "none"]
    assert out.output.split()[2] != "nohome" or "HOME" not in os.environ
