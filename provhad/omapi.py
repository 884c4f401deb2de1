"""The OMAPI edge: host and subclass-member deletes and adds sent to the running dhcpd
(pypureomapi over TCP).

pypureomapi's sockets block, so each request runs in a worker thread under a deadline; on a
timeout the socket is shut down, which ends the blocked thread. Any transport failure drops
the connection (the next call opens a new one). Within :meth:`OmapiClient.apply`, a failure
after the first request leaves dhcpd's host table unknown: the caller must restart dhcpd.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pypureomapi

from provhad.hosts import HostDelta, HostEntry, Member

_T = TypeVar("_T")
#: seconds one request (or the connect with its authentication) may take
DEFAULT_TIMEOUT = 5.0
#: dhcpd's omapi-port as templates/failover.conf.j2 declares it
PORT = 7911
_ONE = struct.pack("!I", 1)
#: an OMAPI status that says the object is not there (dhcpd's isc_result ISC_R_NOTFOUND)
_NOT_FOUND = 23


class OmapiUnavailable(Exception):
    """No OMAPI answer: connection refused or lost, request timed out, key refused."""


class OmapiNotConnected(OmapiUnavailable):
    """No connection could be made: nothing was sent."""


class OmapiRefused(Exception):
    """dhcpd answered a request with an error status (the message is dhcpd's)."""


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`OmapiClient.apply` achieved.

    ``unknown``: a request went unanswered after changes may have been made: what dhcpd holds
    is not known (restart it). ``error``: why nothing could be sent at all (not connected).
    """

    applied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unknown: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unknown and self.error is None


def _status(reply: pypureomapi.OmapiMessage) -> tuple[int, str]:
    """The result code and text of an OMAPI status reply."""
    values = dict(reply.message)
    code = struct.unpack("!I", values[b"result"])[0] if len(values.get(b"result", b"")) == 4 else -1
    return code, values.get(b"message", b"").decode("utf-8", "replace") or f"result {code}"


def add_message(entry: HostEntry) -> pypureomapi.OmapiMessage:
    """The ``open`` that creates ``entry`` (``create`` + ``exclusive``: an existing host of the
    same name or MAC is an error, never a modification); an ip-address only when fixed."""
    if entry.mac is None:
        raise ValueError(f"host {entry.name}: OMAPI cannot add a host without a MAC")
    msg = pypureomapi.OmapiMessage.open(b"host")
    msg.message += [(b"create", _ONE), (b"exclusive", _ONE)]
    msg.obj += [
        (b"name", entry.name.encode()),
        (b"hardware-address", pypureomapi.pack_mac(entry.mac)),
        (b"hardware-type", _ONE),
    ]
    if entry.fixed_address:
        msg.obj.append((b"ip-address", pypureomapi.pack_ip(entry.fixed_address)))
    if entry.statements:
        msg.obj.append((b"statements", entry.statements.encode()))
    return msg


def member_message(member: Member, create: bool) -> pypureomapi.OmapiMessage:
    """The ``open`` of a subclass object: its class by name and its hash string (the MAC's
    six bytes, as dhcpd parses ``subclass "CLASS" MAC;``). With ``create`` it is added
    (``exclusive``: an existing member is an error), else looked up."""
    msg = pypureomapi.OmapiMessage.open(b"subclass")
    if create:
        msg.message += [(b"create", _ONE), (b"exclusive", _ONE)]
    msg.obj += [
        (b"name", member.cls.encode()),
        (b"hashstring", pypureomapi.pack_mac(member.mac)),
    ]
    return msg


def _decode_host(obj: list[tuple[bytes, bytes]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, raw in obj:
        name = key.decode("utf-8", "replace")
        if name == "hardware-address":
            out[name] = pypureomapi.unpack_mac(raw)
        elif name == "ip-address" and len(raw) == 4:
            out[name] = pypureomapi.unpack_ip(raw)
        elif name == "hardware-type" and len(raw) == 4:
            out[name] = struct.unpack("!I", raw)[0]
        elif name == "name":
            out[name] = raw.decode("utf-8", "replace")
        else:
            out[name] = raw
    return out


class OmapiClient:
    """One OMAPI connection to dhcpd, opened on first use and again after any error.

    Requests are serialised (one connection, one request in flight).
    """

    def __init__(
        self,
        host: str,
        port: int,
        key_name: str,
        secret: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._key_name, self._secret = key_name.encode(), secret.encode()
        self._conn: pypureomapi.Omapi | None = None
        self._lock = asyncio.Lock()

    # --- transport -------------------------------------------------------------------------

    def _connect(self) -> pypureomapi.Omapi:
        """A connection whose key dhcpd has accepted. dhcpd takes any key when the
        authenticator is opened and answers the first signed request unsigned, so one
        harmless signed request (a lookup of the empty name) proves the key before a change
        is sent: with a wrong key nothing has been sent when this fails."""
        try:
            conn = pypureomapi.Omapi(
                self.host, self.port, self._key_name, self._secret, timeout=self.timeout
            )
        except (OSError, pypureomapi.OmapiError, ValueError) as exc:
            raise OmapiNotConnected(
                f"OMAPI {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from exc
        try:
            self._open_by_name(conn, "")
        except (OSError, pypureomapi.OmapiError, OmapiRefused) as exc:
            _shutdown(conn)
            raise OmapiNotConnected(
                f"OMAPI {self.host}:{self.port}: key {self._key_name.decode()} refused ({exc})"
            ) from exc
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _shutdown(conn)

    async def _in_thread(self, work: Callable[[pypureomapi.Omapi], _T]) -> _T:
        """``work(connection)`` in a worker thread within the deadline; connects first when
        there is no connection. Any failure drops the connection and raises OmapiUnavailable
        (or the OmapiRefused ``work`` raised, which keeps it)."""
        if self._conn is None:
            try:
                self._conn = await self._deadline(self._connect, None)
            except OmapiUnavailable as exc:
                raise OmapiNotConnected(str(exc)) from exc
        conn = self._conn
        try:
            return await self._deadline(lambda: work(conn), conn)
        except OmapiRefused:
            raise
        except Exception as exc:
            self._drop()
            if isinstance(exc, OmapiUnavailable):
                raise
            raise OmapiUnavailable(
                f"OMAPI {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from exc

    async def _deadline(self, work: Callable[[], _T], conn: pypureomapi.Omapi | None) -> _T:
        abandoned = threading.Event()

        def run() -> _T:
            result = work()
            if abandoned.is_set() and isinstance(result, pypureomapi.Omapi):
                _shutdown(result)  # a connect that finished after its deadline
            return result

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            abandoned.set()
            if conn is not None:
                _shutdown(conn)  # ends the thread's blocking recv
            raise OmapiUnavailable(
                f"OMAPI {self.host}:{self.port}: no answer within {self.timeout:g} s"
            ) from None

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    # --- requests (run in the worker thread) -------------------------------------------------

    @staticmethod
    def _open(
        conn: pypureomapi.Omapi, msg: pypureomapi.OmapiMessage
    ) -> pypureomapi.OmapiMessage | None:
        """The object a lookup ``msg`` names, None when dhcpd has none."""
        reply = conn.query_server(msg)
        if reply.opcode == pypureomapi.OMAPI_OP_UPDATE:
            return reply
        code, text = _status(reply)
        if code == _NOT_FOUND:
            return None
        raise OmapiRefused(f"lookup: {text}")

    @classmethod
    def _open_by_name(cls, conn: pypureomapi.Omapi, name: str) -> pypureomapi.OmapiMessage | None:
        msg = pypureomapi.OmapiMessage.open(b"host")
        msg.obj.append((b"name", name.encode()))
        return cls._open(conn, msg)

    @classmethod
    def _delete(cls, conn: pypureomapi.Omapi, lookup: pypureomapi.OmapiMessage) -> None:
        """Delete the object ``lookup`` finds; one that is not there is no error."""
        found = cls._open(conn, lookup)
        if found is None:
            return  # already gone: deleting is idempotent
        if not found.handle:
            raise OmapiRefused("lookup answered without a handle")
        reply = conn.query_server(pypureomapi.OmapiMessage.delete(found.handle))
        code, text = _status(reply)
        if reply.opcode != pypureomapi.OMAPI_OP_STATUS or code != 0:
            raise OmapiRefused(f"delete: {text}")

    @staticmethod
    def _add(conn: pypureomapi.Omapi, msg: pypureomapi.OmapiMessage) -> None:
        reply = conn.query_server(msg)
        if reply.opcode != pypureomapi.OMAPI_OP_UPDATE:
            raise OmapiRefused(f"add: {_status(reply)[1]}")

    # --- API -------------------------------------------------------------------------------

    async def lookup(self, name: str) -> dict[str, object] | None:
        """The host ``name`` as dhcpd holds it (name, hardware-address, hardware-type,
        ip-address when fixed; OMAPI does not return statements), or None when there is none.
        Raises OmapiUnavailable or OmapiRefused."""
        async with self._lock:
            reply = await self._in_thread(lambda c: self._open_by_name(c, name))
        return None if reply is None else _decode_host(reply.obj)

    async def member(self, member: Member) -> dict[str, int] | None:
        """The subclass ``member`` as dhcpd holds it (its ``lease-limit`` and ``leases-used``),
        or None when the class has no such member. Raises OmapiUnavailable or OmapiRefused."""
        async with self._lock:
            reply = await self._in_thread(
                lambda c: self._open(c, member_message(member, create=False))
            )
        if reply is None:
            return None
        return {k.decode(): struct.unpack("!I", v)[0] for k, v in reply.obj if len(v) == 4}

    async def apply(self, delta: HostDelta) -> ApplyResult:
        """Every delete of ``delta`` (hosts, then subclass members), then every add (hosts,
        then members), one request each (a member's name in results: ``subclass "C" MAC``).

        A request dhcpd refuses is recorded in ``failed`` and the rest still go (the caller
        restarts dhcpd anyway). A lost connection or a timeout stops at once with
        ``unknown``, unless no connection could be made before the first request (then
        ``error``: nothing was sent). Hosts without a
        MAC (``delta.unsupported``) are not sent: the caller must restart for them.
        """
        steps: list[tuple[str, Callable[[pypureomapi.Omapi], None]]] = []
        for name in delta.delete:
            msg = pypureomapi.OmapiMessage.open(b"host")
            msg.obj.append((b"name", name.encode()))
            steps.append((name, functools.partial(self._delete, lookup=msg)))
        steps += [
            (str(m), functools.partial(self._delete, lookup=member_message(m, create=False)))
            for m in delta.leave
        ]
        steps += [(e.name, functools.partial(self._add, msg=add_message(e))) for e in delta.add]
        steps += [
            (str(m), functools.partial(self._add, msg=member_message(m, create=True)))
            for m in delta.join
        ]
        applied, failed = 0, list[tuple[str, str]]()
        async with self._lock:
            if self._conn is not None and steps:
                # a connection kept from before may lead to a dhcpd that has restarted since
                # (provhad's restart, an operator's): proven by a harmless lookup, else it is
                # replaced before anything is sent, not taken for a change in doubt
                with contextlib.suppress(OmapiUnavailable):  # dropped: the step reconnects
                    await self._in_thread(functools.partial(self._open_by_name, name=""))
            for name, step in steps:
                try:
                    await self._in_thread(step)
                    applied += 1
                except OmapiRefused as exc:
                    failed.append((name, str(exc)))
                except OmapiNotConnected as exc:
                    if applied == 0 and not failed:
                        return ApplyResult(error=str(exc))  # nothing was sent
                    failed.append((name, str(exc)))
                    return ApplyResult(applied, failed, unknown=True)
                except OmapiUnavailable as exc:
                    failed.append((name, str(exc)))
                    return ApplyResult(applied, failed, unknown=True)
        return ApplyResult(applied, failed)


def _shutdown(conn: pypureomapi.Omapi) -> None:
    sock = conn.transport.connection
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()
