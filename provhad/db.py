"""The database edge: connecting to a healthy node and reading one consistent snapshot."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiomysql
import pymysql

from provhad.config import DatabaseConfig
from provhad.snapshot import Row, Snapshot

# One statement per snapshot table. Generators skip soft-deleted rows (as upstream's Eloquent
# reads do); provha is read without that filter, exactly like upstream's DB::table()->first().
QUERIES: dict[str, str] = {
    "provha": "SELECT * FROM provha ORDER BY id LIMIT 1",
    "provbase": "SELECT * FROM provbase WHERE deleted_at IS NULL ORDER BY id LIMIT 1",
    "provvoip": "SELECT id, mta_domain FROM provvoip WHERE deleted_at IS NULL ORDER BY id LIMIT 1",
    "netgw": (
        "SELECT id, hostname FROM netgw WHERE type = 'cmts' AND deleted_at IS NULL ORDER BY id"
    ),
    "ippool": (
        "SELECT id, netgw_id, type, net, netmask, ip_pool_start, ip_pool_end, router_ip,"
        " broadcast_ip, dns1_ip, dns2_ip, dns3_ip, optional, active"
        " FROM ippool WHERE version = '4' AND deleted_at IS NULL ORDER BY id"
    ),
    "modem": (
        "SELECT id, hostname, mac, public, internet_access"
        " FROM modem WHERE deleted_at IS NULL ORDER BY id"
    ),
    "mta": "SELECT id, modem_id, mac FROM mta WHERE deleted_at IS NULL ORDER BY id",
    "endpoint": (
        "SELECT e.id, e.hostname, e.mac, e.fixed_ip, e.ip, m.mac AS modemmac"
        " FROM endpoint e JOIN modem m ON m.id = e.modem_id"
        " WHERE e.version = '4' AND e.deleted_at IS NULL ORDER BY e.id"
    ),
}
FIXED_IPS = "SELECT ip FROM endpoint WHERE fixed_ip = 1 AND ip IS NOT NULL AND deleted_at IS NULL"
_NO_SUCH_TABLE = 1146


class DatabaseError(Exception):
    """No node could deliver a snapshot; the message lists each node's problem."""


@dataclass(frozen=True)
class Node:
    """One database endpoint: TCP host/port or a unix socket."""

    host: str
    port: int
    socket: str = ""

    def __str__(self) -> str:
        return self.socket or f"{self.host}:{self.port}"


def nodes(cfg: DatabaseConfig) -> list[Node]:
    """The configured nodes in order; a socket (NMS Prime's DB_SOCKET) comes first."""
    out = [Node("localhost", 0, cfg.socket)] if cfg.socket else []
    out.extend(Node(h, p) for h, p in cfg.endpoints())
    return out


async def connect(cfg: DatabaseConfig, node: Node) -> aiomysql.Connection:
    kwargs: dict[str, Any] = {
        "user": cfg.user,
        "password": cfg.password,
        "db": cfg.name,
        "connect_timeout": cfg.connect_timeout,
        "autocommit": False,
        "charset": "utf8mb4",
    }
    if node.socket:
        kwargs["unix_socket"] = node.socket
    else:
        kwargs["host"], kwargs["port"] = node.host, node.port
    return await aiomysql.connect(**kwargs)


async def node_health(conn: aiomysql.Connection) -> str | None:
    """Why this node must not be read from, or None when it is fit (or not a Galera node)."""
    async with conn.cursor() as cur:
        await cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        wsrep_on = await cur.fetchone()
        if wsrep_on is None or str(wsrep_on[1]).upper() != "ON":
            return None  # a plain MariaDB (or MySQL) server
        await cur.execute(
            "SHOW GLOBAL STATUS WHERE Variable_name IN"
            " ('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')"
        )
        status = {str(k): str(v) for k, v in await cur.fetchall()}
    if status.get("wsrep_ready", "ON") != "ON":
        return "wsrep_ready is OFF"
    if status.get("wsrep_cluster_status", "Primary") != "Primary":
        return f"not in the Primary component ({status['wsrep_cluster_status']})"
    if status.get("wsrep_local_state_comment", "Synced") != "Synced":
        return f"not Synced ({status['wsrep_local_state_comment']})"
    return None


async def _rows(cur: Any, sql: str) -> list[Row]:
    await cur.execute(sql)
    return list(await cur.fetchall())


async def read_snapshot_from(conn: aiomysql.Connection, node: str = "") -> Snapshot:
    """All tables in one read-only transaction with a consistent snapshot."""
    async with conn.cursor(aiomysql.DictCursor) as cur:
        # causal read: see every commit the cluster has certified before this point
        with contextlib.suppress(pymysql.err.MySQLError):  # not a Galera server
            await cur.execute("SET SESSION wsrep_sync_wait = 1")
        await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            tables: dict[str, list[Row]] = {}
            for table, sql in QUERIES.items():
                try:
                    tables[table] = await _rows(cur, sql)
                except pymysql.err.ProgrammingError as exc:
                    # ProvVoip is an optional NMS Prime module
                    if table == "provvoip" and exc.args and exc.args[0] == _NO_SUCH_TABLE:
                        tables[table] = []
                    else:
                        raise
            fixed = [str(r["ip"]) for r in await _rows(cur, FIXED_IPS)]
        finally:
            await conn.rollback()
    return Snapshot(**tables, fixed_ips=fixed, node=node)


async def read_snapshot(cfg: DatabaseConfig) -> Snapshot:
    """A snapshot from the first healthy node, trying each configured node in order."""
    problems: list[str] = []
    for node in nodes(cfg):
        try:
            conn = await connect(cfg, node)
        except (pymysql.err.MySQLError, OSError) as exc:
            problems.append(f"{node}: {_describe(exc)}")
            continue
        try:
            unfit = await node_health(conn)
            if unfit:
                problems.append(f"{node}: {unfit}")
                continue
            return await read_snapshot_from(conn, str(node))
        except (pymysql.err.MySQLError, OSError) as exc:
            problems.append(f"{node}: {_describe(exc)}")
        finally:
            conn.close()
    raise DatabaseError("no database node delivered a snapshot: " + "; ".join(problems))


def _describe(exc: BaseException) -> str:
    args: Sequence[Any] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"error {args[0]}: {args[1]}"
    return str(exc) or type(exc).__name__
