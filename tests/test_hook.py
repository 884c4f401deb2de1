"""The configfile hook (provhad.hook): debounced, one run at a time, no request lost, bounded,
its outcome recorded. Real commands; a FIFO parks a run until the test releases it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provhad.hook import Hook
from provhad.state import State


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = _add


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Until ``cond()`` holds, checked every 10 ms, at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.01)


def script(tmp: Path, body: str) -> list[str]:
    path = tmp / "hook.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return [str(path)]


async def test_requests_during_a_run_make_exactly_one_more_run(tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    os.mkfifo(gate)
    command = script(tmp_path, f"echo run >> {runs}\nread line < {gate}\n")
    state, log, reports = State(), Log(), []
    hook = Hook(command, 30.0, (0.05, 1.0), state, lambda: reports.append(1), log)
    task = asyncio.create_task(hook.run())
    fd = os.open(gate, os.O_RDWR)  # keeps the FIFO open: each "go" waits for its reader
    try:
        hook.request("changed: modem")
        # the script wrote its line (the file exists a moment before the line is in it)
        await until(lambda: runs.exists() and runs.read_text() != "", "the run began")
        assert hook.running
        for n in range(5):  # a burst while the first run is parked: one more run, not five
            hook.request(f"changed: mta {n}")
        assert runs.read_text() == "run\n"  # never two at once
        os.write(fd, b"go\n")
        await until(lambda: hook.runs >= 1, "the first run ended")
        os.write(fd, b"go\n")
        await until(lambda: hook.runs >= 2, "the second run ended")
        assert runs.read_text() == "run\nrun\n"
        second = [kw for e, kw in log.events if e == "configfile_build"][1]
        assert second["reasons"] == [f"changed: mta {n}" for n in range(5)]
        assert state.hook_ok is True and state.hook_last_at and reports
    finally:
        task.cancel()
        os.close(fd)


async def test_failed_and_hung_runs_are_recorded(tmp_path: Path) -> None:
    state, log = State(), Log()
    hook = Hook(
        script(tmp_path, "echo broken >&2; exit 3\n"), 30.0, (0, 0), state, lambda: None, log
    )
    hook.request("periodic")
    outcome = await hook.run_once()
    assert not outcome.ok and state.hook_ok is False and "exit 3: broken" in state.hook_error
    hook.command = tuple(script(tmp_path, "exec sleep 60\n"))
    hook.timeout = 0.2
    hook.request("periodic")
    outcome = await hook.run_once()
    assert outcome.timed_out and "timed out" in state.hook_error


async def test_no_command_means_no_runs(tmp_path: Path) -> None:
    hook = Hook((), 30.0, (0, 0), State(), lambda: None, Log())
    hook.request("periodic")
    assert not hook.reasons and not hook.wake.is_set()
