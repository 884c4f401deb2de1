"""sd_notify messages (systemd.daemon.notify, i.e. libsystemd) and the progress-gated watchdog,
against real AF_UNIX sockets named by $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad.notify import Notifier, Watchdog, monotonic_usec, watchdog_interval

TIMEOUT = 5.0


@pytest.fixture
def listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd's notify socket, in $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield path, sock


def received(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def pending(sock: socket.socket) -> list[bytes]:
    """Everything already queued on the socket, without waiting."""
    out = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(timeout)


async def areceived(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), TIMEOUT)


# --- Notifier -----------------------------------------------------------------------------


def test_ready_status_stopping_extend_watchdog(listener: tuple[str, socket.socket]) -> None:
    _path, sock = listener
    n = Notifier()
    assert n.enabled
    n.ready()
    assert received(sock) == b"READY=1"
    n.ready("applied rev 1234, db=ok")
    assert received(sock) == b"READY=1\nSTATUS=applied rev 1234, db=ok"
    n.status("line one\nline two\r\n")
    assert received(sock) == b"STATUS=line one line two"
    n.stopping("shutting down")
    assert received(sock) == b"STOPPING=1\nSTATUS=shutting down"
    n.stopping()
    assert received(sock) == b"STOPPING=1"
    n.extend_timeout(90)
    assert received(sock) == b"EXTEND_TIMEOUT_USEC=90000000"
    n.extend_timeout(0.25)
    assert received(sock) == b"EXTEND_TIMEOUT_USEC=250000"
    n.watchdog()
    assert received(sock) == b"WATCHDOG=1"
    assert n.send("X_PROVHAD_GENERATION=42", "STATUS=ünïcode")
    assert received(sock) == "X_PROVHAD_GENERATION=42\nSTATUS=ünïcode".encode()
    assert pending(sock) == []


def test_reloading_carries_monotonic_usec(listener: tuple[str, socket.socket]) -> None:
    _path, sock = listener
    before = time.monotonic_ns() // 1000
    Notifier().reloading()
    after = monotonic_usec()
    first, second = received(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    # the daemon passes the stamp it also writes to the state file (provhad reload waits on it)
    Notifier().reloading(1234567)
    assert received(sock) == b"RELOADING=1\nMONOTONIC_USEC=1234567"


def test_the_socket_is_read_from_the_environment_at_each_message(
    listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _path, sock = listener
    n = Notifier()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(tmp_path / "other.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "other.sock"))
        n.ready()
        assert other.recv(65536) == b"READY=1"
    assert pending(sock) == []


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"provhad-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        n.ready("up")
        assert received(sock) == b"READY=1\nSTATUS=up"


def test_without_socket_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.send("READY=1")
    n.ready("x")
    n.reloading()
    n.status("x")
    n.stopping()
    n.extend_timeout(1)
    n.watchdog()
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert not Notifier().enabled


def test_unreachable_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    missing = Notifier()
    assert missing.enabled
    assert not missing.send("READY=1")
    missing.ready()
    # A socket file nobody listens on any more: ECONNREFUSED.
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(stale)
    monkeypatch.setenv("NOTIFY_SOCKET", stale)
    assert not Notifier().send("WATCHDOG=1")
    # libsystemd refuses what is neither a path nor an abstract name (nor vsock:)
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert not Notifier().send("READY=1")


def test_bad_lines_are_refused(listener: tuple[str, socket.socket]) -> None:
    _path, sock = listener
    n = Notifier()
    assert not n.send("STATUS=a\nREADY=1")
    assert not n.send("READY")
    assert not n.send()
    assert pending(sock) == []


# --- watchdog_interval --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
        ({"WATCHDOG_USEC": "1500"}, 0.00075),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_defaults_to_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 4.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


# --- Watchdog -----------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when the test says so; counts reads so a test can wait until the
    watchdog has looked at it (each health check reads it once)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def __call__(self) -> float:
        self.reads += 1
        for target, event in self._waiters:
            if self.reads >= target:
                event.set()
        return self.now

    async def read_more(self, count: int) -> None:
        event = asyncio.Event()
        self._waiters.append((self.reads + count, event))
        await asyncio.wait_for(event.wait(), TIMEOUT)


def test_healthy_until_stale() -> None:
    clock = FakeClock()
    wd = Watchdog(Notifier(), interval=1, stale_after=10, clock=clock)
    assert wd.healthy()  # creation counts as the first beat
    clock.now += 10
    assert wd.healthy()
    clock.now += 0.001
    assert not wd.healthy()
    wd.beat()
    assert wd.healthy()


def test_watchdog_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Watchdog(Notifier(), interval=0, stale_after=1)
    with pytest.raises(ValueError):
        Watchdog(Notifier(), interval=1, stale_after=-1)


async def test_watchdog_is_fed_only_while_the_main_loop_progresses(
    listener: tuple[str, socket.socket],
) -> None:
    _path, sock = listener
    clock = FakeClock()
    wd = Watchdog(Notifier(), interval=0.001, stale_after=10, clock=clock)
    steps: asyncio.Queue[None] = asyncio.Queue()
    done: asyncio.Queue[None] = asyncio.Queue()

    async def main_loop() -> None:
        # Stands in for the daemon: one beat per finished step; it hangs when no step comes.
        while True:
            await steps.get()
            clock.now += 4
            wd.beat()
            await done.put(None)

    feeder = asyncio.create_task(wd.run())
    loop_task = asyncio.create_task(main_loop())
    try:
        # Progress: 5 steps take 20 fake seconds, twice stale_after, yet every ping goes out.
        for _ in range(5):
            await steps.put(None)
            await asyncio.wait_for(done.get(), TIMEOUT)
            pending(sock)  # only a ping sent after this step counts
            assert await areceived(sock) == b"WATCHDOG=1"
        assert wd.healthy()

        # The main loop hangs (no more steps). Time passes; the watchdog task still runs, checks
        # health several times, and sends nothing.
        clock.now += 10.5
        pending(sock)  # pings from before the hang
        await clock.read_more(5)
        assert pending(sock) == []
        assert not wd.healthy()  # nothing can have been sent since: only unhealthy checks ran

        # One more step: pings resume.
        await steps.put(None)
        await asyncio.wait_for(done.get(), TIMEOUT)
        assert await areceived(sock) == b"WATCHDOG=1"
    finally:
        feeder.cancel()
        loop_task.cancel()
        results = await asyncio.gather(feeder, loop_task, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def test_watchdog_without_socket_runs_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    clock = FakeClock()
    wd = Watchdog(Notifier(), interval=0.001, stale_after=1, clock=clock)
    task = asyncio.create_task(wd.run())
    await clock.read_more(3)
    clock.now += 2  # starved: logs once, keeps running
    await clock.read_more(3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
