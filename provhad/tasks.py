"""Stopping asyncio tasks for sure.

One ``Task.cancel()`` is not always enough on Python 3.11 (Debian 12's): ``asyncio.wait_for``
returns the inner result and drops the cancellation when both arrive in the same loop
iteration (python/cpython#86296), e.g. a PUBACK and SIGTERM together. The task then goes on
waiting for work that never comes, and whoever awaits it hangs. So: cancel, wait a little,
cancel again, for a bounded time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from provhad import log

__all__ = ["cancel_and_wait"]

_log = log.get(__name__)

#: Seconds between two cancellations of a task that is still running.
RECANCEL_AFTER = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], grace: float
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until they are done, at most ``grace`` seconds; the ones still running.

    The tasks' own exceptions are left for the caller to look at. A cancellation of the
    caller itself is passed on after the tasks were cancelled once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_AFTER, left))
    for task in pending:
        _log.error("task did not stop", task=task.get_name(), grace=grace)
    return pending
