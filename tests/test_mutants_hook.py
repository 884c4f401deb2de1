"""Tests that kill mutants of provhad/hook.py which tests/test_hook.py lets live: the burst of
requests on an injected clock, what a run leaves behind, how its outcome is logged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provhad.hook import Hook
from provhad.state import State
from tests.test_hook import script


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Log:
    """Keeps each event with its level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.events.append((level, event, kw))


async def settle() -> None:
    """Let the hook's task run until it waits again (it needs a few turns of the loop)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not done():
            await asyncio.sleep(0.01)


def reasons(log: Log) -> list[list[str]]:
    return [kw["reasons"] for _, event, kw in log.events if event == "configfile_build"]


async def test_a_burst_runs_once_at_its_max_delay_and_the_next_burst_starts_afresh(
    tmp_path: Path,
) -> None:
    clock, log = Clock(), Log()
    hook = Hook(script(tmp_path, "exit 0\n"), 30.0, (10.0, 20.0), State(), lambda: None, log, clock)
    task = asyncio.create_task(hook.run())
    try:
        hook.request("a")
        await settle()
        assert hook.runs == 0 and not hook.running  # the burst has begun, not ended
        clock.now = 5.0
        hook.request("b")
        await settle()
        assert hook.runs == 0 and not hook.running
        clock.now = 20.0  # max_delay after the first request: runs although "c" is fresh
        hook.request("c")
        await until(lambda: hook.runs == 1)
        assert reasons(log) == [["a", "b", "c"]]
        clock.now = 21.0  # a new burst, measured from its own first request
        hook.request("d")
        await settle()
        assert hook.runs == 1 and not hook.running
        clock.now = 41.0
        hook.request("e")
        await until(lambda: hook.runs == 2)
        assert reasons(log) == [["a", "b", "c"], ["d", "e"]]
    finally:
        task.cancel()


async def test_a_run_leaves_the_hook_idle_and_says_how_it_went(tmp_path: Path) -> None:
    clock, log, state, reports = Clock(), Log(), State(), []
    clock.now = 100.0
    hook = Hook(
        script(tmp_path, "exit 0\n"), 30.0, (0, 0), state, lambda: reports.append(1), log, clock
    )
    hook.request("periodic")
    assert (await hook.run_once()).ok
    assert not hook.running and not hook.reasons and reports == [1]
    assert state.hook_seconds == 0.0  # the clock stood still during the run
    assert [(level, event) for level, event, _ in log.events] == [("info", "configfile_build")]
    hook.command = tuple(script(tmp_path, "exit 2\n"))
    hook.request("periodic")
    assert not (await hook.run_once()).ok
    assert [level for level, _, _ in log.events] == ["info", "error"]


async def test_a_run_is_bounded_by_the_configured_timeout(tmp_path: Path) -> None:
    state = State()
    hook = Hook(script(tmp_path, "exec sleep 5\n"), 0.2, (0, 0), state, lambda: None, Log())
    hook.request("periodic")
    assert (await hook.run_once()).timed_out and state.hook_ok is False


async def test_a_request_made_while_a_run_ends_gets_a_run_of_its_own(tmp_path: Path) -> None:
    log = Log()
    hook: Hook

    def report() -> None:  # called by the run before it returns: a request "during" it
        if hook.runs == 1:
            hook.request("came during the first run")

    hook = Hook(script(tmp_path, "exit 0\n"), 30.0, (0, 0), State(), report, log)
    task = asyncio.create_task(hook.run())
    try:
        hook.request("first")
        await until(lambda: hook.runs == 2)  # bounded: a lost request fails, not hangs
        assert reasons(log) == [["first"], ["came during the first run"]]
    finally:
        task.cancel()
