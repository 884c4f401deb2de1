"""provhad.mqtt against a real mosquitto: status, last will, triggers, outages, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from provhad.config import MqttConfig
from provhad.mqtt import (
    MqttLink,
    MqttTriggerError,
    backoff_delay,
    status_topic,
    trigger,
)
from provhad.testbed import Mosquitto, free_port

#: Bound for anything that should happen "at once" on localhost; generous for loaded CI.
WAIT = 10.0
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg(mosquitto: Mosquitto, request: pytest.FixtureRequest) -> MqttConfig:
    return config_for(mosquitto, request.node.name)


def config_for(broker: Mosquitto, name: str) -> MqttConfig:
    """Topics of their own per test, so retained messages of one test never reach another."""
    prefix = f"test/{name}/{os.urandom(4).hex()}"
    return MqttConfig(
        host=broker.host,
        port=broker.port,
        topic_prefix=prefix,
        trigger_topic=f"{prefix}/rebuild",
        keepalive=5,
    )


@contextlib.asynccontextmanager
async def subscribed(cfg: MqttConfig, topic: str) -> AsyncIterator[aiomqtt.Client]:
    """A separate client (an observer) subscribed to ``topic``."""
    async with aiomqtt.Client(cfg.host, cfg.port) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client, timeout: float = WAIT) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(client.messages)


async def message_where(
    client: aiomqtt.Client, want: Callable[[dict[str, Any]], bool], timeout: float = WAIT
) -> aiomqtt.Message:
    """The first message whose JSON payload satisfies ``want`` (earlier ones are skipped)."""
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if want(decode(message)):
                return message
    raise AssertionError("message iteration ended")  # pragma: no cover


async def retained(cfg: MqttConfig, topic: str) -> tuple[dict[str, Any], bool]:
    """What a newcomer gets on ``topic`` right away: the retained message and its flag."""
    async with subscribed(cfg, topic) as client:
        message = await next_message(client)
        return decode(message), message.retain


def decode(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes)
    data = json.loads(message.payload)
    assert isinstance(data, dict)
    return data


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) for a condition that has no event to wait on, e.g. a link's state."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> float:
    """Cancel ``task`` and wait (bounded) for it; returns how long that took."""
    started = time.monotonic()
    task.cancel()
    # Not wait_for: on its timeout it would cancel again and wait without bound.
    done, _ = await asyncio.wait({task}, timeout=WAIT)
    assert done, f"still running {WAIT}s after cancel()"
    return time.monotonic() - started


def queue_link(
    cfg: MqttConfig, node: str = "slave1", backoff_max: float = 0.2
) -> tuple[MqttLink, asyncio.Queue[str]]:
    """A link whose trigger payloads land in a queue."""
    triggers: asyncio.Queue[str] = asyncio.Queue()
    return MqttLink(cfg, node, triggers.put_nowait, backoff_max=backoff_max), triggers


async def until_listening(cfg: MqttConfig, link: MqttLink, node: str = "slave1") -> None:
    """Return once ``link`` listens to triggers: it subscribes before publishing a status."""
    async with subscribed(cfg, status_topic(cfg, node)) as observer:
        link.publish_status({"state": "ok", "probe": True})
        await message_where(observer, lambda d: d.get("probe") is True)


def within(awaitable: Awaitable[Any], timeout: float = WAIT) -> Awaitable[Any]:
    return asyncio.wait_for(awaitable, timeout)


# --- status ---------------------------------------------------------------------------


def test_status_topic() -> None:
    assert status_topic(MqttConfig(topic_prefix="a/b"), "n1") == "a/b/n1/status"


async def test_status_published_before_connecting_arrives_retained(cfg: MqttConfig) -> None:
    link, _ = queue_link(cfg)
    link.publish_status({"state": "ok", "generation": 7, "applied": "abc"})
    assert not link.connected
    topic = status_topic(cfg, "slave1")
    async with subscribed(cfg, topic) as observer, running(link):
        live = await message_where(observer, lambda d: d.get("generation") == 7)
        assert decode(live) == {"state": "ok", "generation": 7, "applied": "abc"}
        assert live.qos == 1
        assert link.connected
        assert link.last_error == ""
        # A newcomer gets it from the broker's retained store.
        assert await retained(cfg, topic) == (decode(live), True)


async def test_status_is_sorted_json_and_latest_wins(cfg: MqttConfig) -> None:
    link, _ = queue_link(cfg)
    topic = status_topic(cfg, "slave1")
    async with subscribed(cfg, topic) as observer, running(link):
        link.publish_status({"b": 1, "a": Path("/x"), "state": "first"})
        message = await message_where(observer, lambda d: d.get("state") == "first")
        assert message.payload == b'{"a": "/x", "b": 1, "state": "first"}'  # sort_keys, str()
        link.publish_status({"state": "second"})
        await message_where(observer, lambda d: d.get("state") == "second")
        assert await retained(cfg, topic) == ({"state": "second"}, True)


# --- triggers -------------------------------------------------------------------------


async def test_trigger_topic_message_reaches_callback(cfg: MqttConfig) -> None:
    link, triggers = queue_link(cfg)
    async with running(link), aiomqtt.Client(cfg.host, cfg.port) as master:
        await until_listening(cfg, link)
        await master.publish(cfg.trigger_topic, "hello", qos=1)
        assert await within(triggers.get()) == "hello"
        await master.publish(cfg.trigger_topic, None, qos=1)  # empty payload
        assert await within(triggers.get()) == ""


async def test_failing_callback_does_not_break_the_link(cfg: MqttConfig) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()

    def on_trigger(payload: str) -> None:
        got.put_nowait(payload)
        if payload == "boom":
            raise RuntimeError("callback bug")

    link = MqttLink(cfg, "slave1", on_trigger, backoff_max=0.2)
    async with running(link) as task, aiomqtt.Client(cfg.host, cfg.port) as master:
        await until_listening(cfg, link)
        await master.publish(cfg.trigger_topic, "boom", qos=1)
        await master.publish(cfg.trigger_topic, "after", qos=1)
        assert [await within(got.get()), await within(got.get())] == ["boom", "after"]
        assert link.connected and not task.done()


async def test_own_status_is_not_a_trigger(cfg: MqttConfig) -> None:
    # A wildcard trigger topic that also covers the status topic.
    wide = dataclasses.replace(cfg, trigger_topic=f"{cfg.topic_prefix}/#")
    link, triggers = queue_link(wide)
    async with running(link), aiomqtt.Client(cfg.host, cfg.port) as master:
        await until_listening(wide, link)
        await master.publish(f"{cfg.topic_prefix}/rebuild", "real", qos=1)
        assert await within(triggers.get()) == "real"
        assert triggers.empty()


async def test_trigger_round_trip(cfg: MqttConfig) -> None:
    link, triggers = queue_link(cfg)
    async with running(link):
        await until_listening(cfg, link)
        await trigger(cfg, "modem 42 changed", timeout=WAIT)
        request = json.loads(await within(triggers.get()))
    assert request["reason"] == "modem 42 changed"
    assert request["from"] == socket.gethostname()
    assert request["at"][:4].isdigit() and request["at"][10] == "T"


async def test_trigger_is_not_retained(cfg: MqttConfig) -> None:
    await trigger(cfg, "once", timeout=WAIT)
    link, triggers = queue_link(cfg)
    async with running(link):
        await until_listening(cfg, link)
        # The probe status went through after the subscription: a retained request
        # would have been delivered before it.
        assert triggers.empty()


async def test_trigger_refused_raises() -> None:
    cfg = MqttConfig(host="127.0.0.1", port=free_port())  # nothing listens there
    started = time.monotonic()
    with pytest.raises(MqttTriggerError, match=rf"127\.0\.0\.1:{cfg.port}"):
        await trigger(cfg, timeout=2.0)
    assert time.monotonic() - started < 2.0 + 1.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never speaks MQTT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


async def test_trigger_silent_broker_times_out(silent_port: int) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=silent_port)
    started = time.monotonic()
    with pytest.raises(MqttTriggerError, match=r"did not answer within 0\.5s"):
        await trigger(cfg, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0


# --- last will and shutdown ------------------------------------------------------------

_LINK_PROCESS = """
import asyncio, sys
from provhad.config import MqttConfig
from provhad.mqtt import MqttLink

host, port, prefix, node = sys.argv[1:5]
cfg = MqttConfig(host=host, port=int(port), topic_prefix=prefix,
                 trigger_topic=prefix + "/rebuild", keepalive=5)

async def main() -> None:
    link = MqttLink(cfg, node, lambda payload: None, backoff_max=0.2)
    link.publish_status({"state": "ok", "pid": __import__("os").getpid()})
    await link.run()

asyncio.run(main())
"""


async def test_last_will_when_the_process_dies(cfg: MqttConfig, tmp_path: Path) -> None:
    topic = status_topic(cfg, "slave9")
    errors = tmp_path / "link.stderr"
    async with subscribed(cfg, topic) as observer:
        with errors.open("wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _LINK_PROCESS,
                    cfg.host,
                    str(cfg.port),
                    cfg.topic_prefix,
                    "slave9",
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            try:
                online = await message_where(observer, lambda d: d.get("state") == "ok")
            except TimeoutError:
                raise AssertionError(
                    f"link process never came online:\n{errors.read_text()}"
                ) from None
            assert decode(online)["pid"] == proc.pid
            proc.send_signal(signal.SIGKILL)  # no chance to say goodbye
            await asyncio.to_thread(proc.wait, WAIT)
            will = await message_where(observer, lambda d: d.get("state") != "ok")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert decode(will) == {"state": "offline", "node": "slave9"}
    assert await retained(cfg, topic) == ({"state": "offline", "node": "slave9"}, True)


async def test_cancel_returns_promptly_and_says_offline(cfg: MqttConfig) -> None:
    link, _ = queue_link(cfg)
    topic = status_topic(cfg, "slave1")
    async with subscribed(cfg, topic) as observer:
        task = asyncio.create_task(link.run())
        try:
            link.publish_status({"state": "ok"})
            await message_where(observer, lambda d: d.get("state") == "ok")
        finally:
            took = await stop(task)
        assert task.cancelled()
        assert took < 3.0
        assert not link.connected
        offline = await message_where(observer, lambda d: d.get("state") == "offline")
    assert decode(offline) == {"state": "offline", "node": "slave1"}
    assert await retained(cfg, topic) == ({"state": "offline", "node": "slave1"}, True)


async def test_a_link_can_be_replaced_by_one_with_new_settings(cfg: MqttConfig) -> None:
    """What the daemon does on SIGHUP when [mqtt] changed: stop the old link, start a new one
    (same client id, so the old session must really be gone before the new one connects)."""
    old_cfg = dataclasses.replace(cfg, client_id=f"provhad-{os.urandom(4).hex()}")
    new_cfg = dataclasses.replace(
        old_cfg,
        topic_prefix=f"{cfg.topic_prefix}/new",
        trigger_topic=f"{cfg.topic_prefix}/new/rebuild",
    )
    old, old_triggers = queue_link(old_cfg)
    task = asyncio.create_task(old.run())
    try:
        await until_listening(old_cfg, old)
        old.publish_status({"state": "ok", "gen": 1})
    finally:
        await stop(task)
    assert task.cancelled() and not old.connected
    assert await retained(cfg, status_topic(old_cfg, "slave1")) == (
        {"state": "offline", "node": "slave1"},
        True,
    )
    new, new_triggers = queue_link(new_cfg)
    async with running(new) as new_task, aiomqtt.Client(cfg.host, cfg.port) as master:
        await until_listening(new_cfg, new)
        new.publish_status({"state": "ok", "gen": 2})
        async with subscribed(cfg, status_topic(new_cfg, "slave1")) as observer:
            await message_where(observer, lambda d: d.get("gen") == 2)
        await master.publish(new_cfg.trigger_topic, "after reload", qos=1)
        assert await within(new_triggers.get()) == "after reload"
        assert new.connected and not new_task.done() and new.last_error == ""
    assert old_triggers.empty()
    # the old link, stopped for good, did not come back and take over the client id
    assert await retained(cfg, status_topic(old_cfg, "slave1")) == (
        {"state": "offline", "node": "slave1"},
        True,
    )


async def test_cancel_while_broker_unreachable_returns_promptly() -> None:
    cfg = MqttConfig(host="127.0.0.1", port=free_port())
    link, _ = queue_link(cfg)
    task = asyncio.create_task(link.run())
    await eventually(lambda: link.last_error != "", "first failed attempt")
    assert await stop(task) < 3.0
    assert task.cancelled()


async def test_cancel_survives_an_error_while_closing(
    cfg: MqttConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    link, _ = queue_link(cfg)
    inside = asyncio.Event()
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if sessions == 1:  # once only, so that a failure here cannot hang the teardown
                # As aiomqtt's __aexit__ does when the disconnect times out.
                raise aiomqtt.MqttError("Operation timed out") from None
            raise

    monkeypatch.setattr(link, "_session", session)
    task = asyncio.create_task(link.run())
    await within(inside.wait())
    assert await stop(task) < 3.0
    assert task.cancelled()
    assert sessions == 1


# --- outages (a broker of their own, so the session one stays untouched) ----------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # A fixed port: a link configured before start() must find the broker there.
    server = Mosquitto(tmp_path / "mosquitto", port=free_port())
    try:
        yield server
    finally:
        server.stop()


async def test_broker_down_at_start_then_up(broker: Mosquitto) -> None:
    cfg = config_for(broker, "down-at-start")
    link, _ = queue_link(cfg)
    link.publish_status({"state": "ok", "generation": 1})
    async with running(link) as task:
        await eventually(lambda: link.last_error != "", "a failed attempt")
        assert not link.connected
        assert f"{cfg.host}:{cfg.port}" in link.last_error
        assert not task.done()  # still trying
        await asyncio.to_thread(broker.start)
        await eventually(lambda: link.connected, "connected after the broker came up")
        async with subscribed(cfg, status_topic(cfg, "slave1")) as observer:
            # Retained if it went out before we subscribed, live if after: both count.
            await message_where(observer, lambda d: d.get("generation") == 1)
        assert link.last_error == ""


async def test_broker_restart_reconnects_and_republishes(broker: Mosquitto) -> None:
    broker.start()
    cfg = config_for(broker, "restart")
    link, triggers = queue_link(cfg)
    topic = status_topic(cfg, "slave1")
    async with running(link):
        async with subscribed(cfg, topic) as observer:
            link.publish_status({"state": "ok", "generation": 1})
            await message_where(observer, lambda d: d.get("generation") == 1)
            link.publish_status({"state": "ok", "generation": 2})
            await message_where(observer, lambda d: d.get("generation") == 2)
        await asyncio.to_thread(broker.stop)  # persistence off: the retained status is gone
        await eventually(lambda: not link.connected and link.last_error != "", "link down")
        await asyncio.to_thread(broker.start)
        await eventually(lambda: link.connected, "reconnected")
        async with subscribed(cfg, topic) as observer:
            message = await message_where(observer, lambda d: "generation" in d)
            assert decode(message) == {"state": "ok", "generation": 2}
        # Resubscribed as well.
        await until_listening(cfg, link)
        await trigger(cfg, "after restart", timeout=WAIT)
        assert json.loads(await within(triggers.get()))["reason"] == "after restart"


# --- backoff --------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    for failures in range(1, 200):
        delay = backoff_delay(failures, cap=30.0, start=0.5)
        ceiling = min(30.0, 0.5 * 2 ** min(failures - 1, 32))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(1, cap=0.2) <= 0.2
    assert len({backoff_delay(5, cap=30.0) for _ in range(20)}) > 1  # jittered
