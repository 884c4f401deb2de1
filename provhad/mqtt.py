"""The optional MQTT side of provhad: status out, rebuild requests in.

The daemon keeps one :class:`MqttLink`: it publishes a retained JSON status per node (the
broker publishes the link's last will, ``{"state": "offline"}``, when the link dies
uncleanly) and passes every message on the trigger topic to a callback. ``provhad trigger``
(on the master) uses :func:`trigger` to publish one rebuild request.

MQTT is a convenience, never a dependency: a rebuild does not wait for the broker, and an
outage only shows in :attr:`MqttLink.last_error` while the link retries with backoff.
aiomqtt 2.x does not reconnect by itself, so every attempt uses a fresh ``Client``: a
reused one keeps state from the lost connection (empicano/aiomqtt#288).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import aiomqtt

from provhad import log
from provhad.config import MqttConfig
from provhad.tasks import cancel_and_wait

__all__ = ["MqttLink", "MqttTriggerError", "status_topic", "trigger"]

_log = log.get(__name__)

#: Seconds to wait for CONNACK, SUBACK or PUBACK before calling the connection broken.
OPERATION_TIMEOUT = 10.0
#: Seconds a stopping link spends on saying "offline"; shutdown must not hang on a broker.
CLOSE_TIMEOUT = 2.0
#: First retry delay (seconds) after a failure; it doubles up to ``backoff_max``.
BACKOFF_START = 0.5


class MqttTriggerError(Exception):
    """A rebuild request could not be delivered to the broker."""


def status_topic(cfg: MqttConfig, node: str) -> str:
    """The topic carrying ``node``'s retained status."""
    return f"{cfg.topic_prefix}/{node}/status"


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data), sort_keys=True, default=str).encode()


def _text(payload: object) -> str:
    # paho always hands over bytes; aiomqtt's wider payload type allows the rest.
    if payload is None:
        return ""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload).decode("utf-8", errors="replace")
    return str(payload)


def backoff_delay(failures: int, cap: float, start: float = BACKOFF_START) -> float:
    """Seconds to wait after ``failures`` consecutive failed attempts (1 = the first).

    Exponential up to ``cap``, with jitter so that many slaves do not storm a restarted
    broker in step; never more than ``cap``.
    """
    ceiling = min(cap, start * 2.0 ** min(max(failures - 1, 0), 32))
    return ceiling * random.uniform(0.5, 1.0)


def _client(
    cfg: MqttConfig, will: aiomqtt.Will | None = None, timeout: float = OPERATION_TIMEOUT
) -> aiomqtt.Client:
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username or None,
        password=cfg.password or None,
        # None: paho makes up a random id, so two processes on one node never take over
        # each other's session (and trigger each other's will) in a loop.
        identifier=cfg.client_id or None,
        will=will,
        keepalive=cfg.keepalive,
        timeout=timeout,
    )


def _discard(client: aiomqtt.Client) -> None:
    """Close a socket that aiomqtt leaves open when CONNACK never came.

    After a timed-out or cancelled ``__aenter__`` the half-open connection stays registered
    with the event loop (empicano/aiomqtt#269), and would complete later as a zombie
    session holding our will. A no-op when the client is already disconnected.
    """
    with contextlib.suppress(Exception):
        client._client.disconnect()


class MqttLink:
    """The daemon's optional MQTT side: a retained JSON status per node, a last will saying
    offline, and rebuild requests on the trigger topic. Its loss never affects rebuilds.

    Use from one event loop: :meth:`publish_status` from anywhere in it, :meth:`run` as a
    task. The link subscribes to the trigger topic before it publishes a status, so once
    a status from this connection is visible, rebuild requests are being listened to.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        node: str,
        on_trigger: Callable[[str], None],
        *,
        backoff_max: float = 30.0,
    ) -> None:
        self._cfg = cfg
        self._node = node
        self._on_trigger = on_trigger
        self._backoff_max = backoff_max
        self._topic = status_topic(cfg, node)
        self._offline = _encode({"state": "offline", "node": node})
        self._status: bytes | None = None
        self._status_dirty = asyncio.Event()
        self._connected = False
        self._connections = 0  # successful connects, to reset the backoff
        self._last_error = ""

    @property
    def connected(self) -> bool:
        """True while connected to the broker (CONNACK received)."""
        return self._connected

    @property
    def last_error(self) -> str:
        """Why the link is down (``host:port: reason``), "" while connected or not yet tried."""
        return self._last_error

    def publish_status(self, status: Mapping[str, Any]) -> None:
        """Remember ``status``; it goes out retained as soon as (and whenever) connected.

        Never blocks and never raises for a broker problem. Only the latest status is
        kept: intermediate ones are skipped while the link is down or busy.
        """
        try:
            # Encoded now: a snapshot, immune to later changes of the caller's dict.
            self._status = _encode(status)
        except (TypeError, ValueError):
            _log.exception("mqtt status not encodable as JSON, keeping the previous one")
            return
        self._status_dirty.set()

    async def run(self) -> None:
        """Stay connected until cancelled; never raises anything but ``CancelledError``.

        On cancel it publishes the retained offline status (if connected) and disconnects
        cleanly, within about :data:`CLOSE_TIMEOUT` seconds.
        """
        me = asyncio.current_task()
        failures = 0
        connections = self._connections
        where = f"{self._cfg.host}:{self._cfg.port}"
        try:
            while True:
                trace: BaseException | None = None
                try:
                    await self._session()
                    reason = "connection ended"  # _session only returns if the broker hangs up
                except aiomqtt.MqttError as exc:
                    reason = str(exc) or type(exc).__name__
                except Exception as exc:  # a bug (or a bad host name) must not end the daemon
                    reason, trace = f"{type(exc).__name__}: {exc}", exc
                if me is not None and me.cancelling():
                    # An error while closing replaced our CancelledError; stop anyway.
                    raise asyncio.CancelledError
                self._connected = False
                failures = 1 if self._connections != connections else failures + 1
                connections = self._connections
                error = f"{where}: {reason}"
                delay = backoff_delay(failures, self._backoff_max)
                # One warning per outage or change of cause; the retries themselves are noise.
                level = logging.WARNING if error != self._last_error else logging.DEBUG
                _log.log(level, "mqtt down", error=error, retry_in=round(delay, 1), exc_info=trace)
                self._last_error = error
                await asyncio.sleep(delay)
        finally:
            self._connected = False

    async def _session(self) -> None:
        """One connection: connect, subscribe, then serve until it breaks or is cancelled."""
        will = aiomqtt.Will(self._topic, self._offline, qos=1, retain=True)
        client = _client(self._cfg, will)
        try:
            async with client:
                self._connected = True
                self._connections += 1
                self._last_error = ""
                _log.info("mqtt connected", broker=f"{self._cfg.host}:{self._cfg.port}")
                try:
                    await client.subscribe(self._cfg.trigger_topic, qos=1)
                    if self._status is not None:
                        self._status_dirty.set()  # the broker may have lost it (restart)
                    await self._serve(client)
                except asyncio.CancelledError:
                    await self._say_offline(client)
                    raise
        finally:
            self._connected = False
            _discard(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.create_task(self._receive(client))
        publisher = asyncio.create_task(self._publish_statuses(client))
        tasks = (receiver, publisher)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Let both finish before the client is closed under them; a cancellation that
            # aiomqtt's wait for a PUBACK drops must not leave the publisher waiting forever.
            await cancel_and_wait(tasks, CLOSE_TIMEOUT)
        for task in tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value == self._topic:
                # A trigger topic with wildcards may cover our own status: not a request.
                continue
            try:
                self._on_trigger(_text(message.payload))
            except Exception:
                _log.exception("mqtt trigger callback failed")

    async def _publish_statuses(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            if self._status is not None:
                await client.publish(self._topic, self._status, qos=1, retain=True)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        # A clean disconnect suppresses the will, so say it ourselves; best effort.
        try:
            await client.publish(
                self._topic, self._offline, qos=1, retain=True, timeout=CLOSE_TIMEOUT
            )
        except Exception as exc:  # stopping must go on whatever the broker does
            _log.debug("mqtt offline status not published", error=str(exc))


async def trigger(cfg: MqttConfig, reason: str = "", *, timeout: float = 10.0) -> None:
    """Publish one rebuild request (QoS 1, not retained) on ``cfg.trigger_topic``.

    Returns once the broker acknowledged it; raises :class:`MqttTriggerError` when the
    broker cannot be reached or does not answer within ``timeout`` seconds.
    """
    where = f"{cfg.host}:{cfg.port}"
    payload = _encode(
        {
            "reason": reason,
            "from": socket.gethostname(),
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
    )
    # aiomqtt's own waits get a little longer, so that ours ends a slow attempt and the
    # message is always the same.
    client = _client(cfg, timeout=timeout + 1.0)
    try:
        async with asyncio.timeout(timeout), client:
            await client.publish(cfg.trigger_topic, payload, qos=1, retain=False)
    except TimeoutError:
        raise MqttTriggerError(f"MQTT broker {where} did not answer within {timeout:g}s") from None
    except aiomqtt.MqttError as exc:
        raise MqttTriggerError(f"MQTT broker {where}: {exc}") from exc
    finally:
        _discard(client)
