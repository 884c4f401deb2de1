"""Stopping tasks that drop a cancellation (what hung `provhad run` on SIGTERM in CI)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from provhad.tasks import cancel_and_wait


async def _settle() -> None:
    # Let every ready callback run; no time passes.
    for _ in range(10):
        await asyncio.sleep(0)


async def _publisher(ack: asyncio.Future[int], work: asyncio.Event) -> None:
    """The shape of MqttLink's status publisher: wait for a PUBACK, then for more work."""
    await asyncio.wait_for(ack, 10)
    while True:
        await work.wait()
        work.clear()


def _race(ack: asyncio.Future[int], task: asyncio.Task[None]) -> None:
    """The PUBACK and the cancellation in the same loop iteration."""
    ack.set_result(1)
    task.cancel()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten in 3.12")
async def test_one_cancel_can_be_lost_on_python_3_11() -> None:
    ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_publisher(ack, asyncio.Event()))
    await _settle()
    _race(ack, task)
    await _settle()
    assert not task.done()  # the race this module exists for
    task.cancel()
    await _settle()
    assert task.cancelled()


async def test_cancel_and_wait_stops_a_task_that_lost_a_cancellation() -> None:
    ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    work = asyncio.Event()
    task = asyncio.create_task(_publisher(ack, work))
    other = asyncio.create_task(asyncio.Event().wait())
    await _settle()
    ack.set_result(1)  # the race, as in _race, but with the helper doing the cancelling
    assert await cancel_and_wait([task, other], grace=30) == set()
    assert task.cancelled() and other.cancelled()


async def test_cancel_and_wait_gives_up_on_a_task_that_refuses() -> None:
    release = asyncio.Event()
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels += 1

    task = asyncio.create_task(stubborn())
    await _settle()
    assert await cancel_and_wait([task], grace=0.3) == {task}
    assert cancels >= 1 and not task.done()
    release.set()
    await task


async def test_cancel_and_wait_leaves_exceptions_to_the_caller() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await _settle()
    assert await cancel_and_wait([task], grace=1) == set()
    assert isinstance(task.exception(), RuntimeError)
