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
                    # ProvVoip (provvoip, mta) is an optional NMS Prime module
                    if table in ("provvoip", "mta") and exc.args and exc.args[0] == _NO_SUCH_TABLE:
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


# --- change detection -------------------------------------------------------------------------

#: The columns generation reads per watched table; a fingerprint covers exactly these, so writes
#: to other columns (cacti's modem levels, GUI-only fields) cause no rebuild.
WATCHED: dict[str, tuple[str, ...]] = {
    "provha": (
        "master",
        "slaves",
        "master_dns_password",
        "slave_dns_password",
        "load_ratio_master",
        "slave_config_rebuild_interval",
    ),
    "provbase": (
        "provisioning_server",
        "domain_name",
        "dhcp_def_lease_time",
        "dhcp_max_lease_time",
        "multiple_provisioning_systems",
        "dns_password",
    ),
    "provvoip": ("mta_domain",),
    "netgw": ("hostname", "type"),
    "ippool": (
        "netgw_id",
        "type",
        "net",
        "netmask",
        "ip_pool_start",
        "ip_pool_end",
        "router_ip",
        "broadcast_ip",
        "dns1_ip",
        "dns2_ip",
        "dns3_ip",
        "optional",
        "version",
        "active",
    ),
    "modem": ("hostname", "mac", "public", "internet_access"),
    "mta": ("modem_id", "mac"),
    "endpoint": ("hostname", "mac", "fixed_ip", "ip", "version", "modem_id"),
}


def fingerprint_sql(table: str) -> str:
    """COUNT, MAX(id) and two order-independent sums of a CRC32 per row over the watched columns
    and deleted_at: inserts, hard and soft deletes and updates within the same second (or that
    do not touch updated_at at all) all change it; no local clock is involved."""
    cols = ", ".join(f"IFNULL(`{c}`, '\\0')" for c in ("id", *WATCHED[table], "deleted_at"))
    row = f"CRC32(CONCAT_WS('|', {cols}))"
    return (
        f"SELECT COUNT(*), IFNULL(MAX(id), 0), IFNULL(SUM({row}), 0), IFNULL(BIT_XOR({row}), 0)"
        f" FROM `{table}`"
    )


async def commit_position(conn: aiomysql.Connection) -> str | None:
    """A cheap value that moves whenever anything commits: Galera's wsrep_last_committed, else
    the binlog GTID position; None when the server offers neither (then every poll fingerprints)."""
    async with conn.cursor() as cur:
        await cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_last_committed'")
        row = await cur.fetchone()
        if row is not None and str(row[1]) not in ("", "-1"):
            await cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
            on = await cur.fetchone()
            if on is not None and str(on[1]).upper() == "ON":
                return f"wsrep:{row[1]}"
        await cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        gtid = await cur.fetchone()
        if gtid is not None and gtid[0]:
            return f"gtid:{gtid[0]}"
    return None


async def fingerprints(conn: aiomysql.Connection) -> dict[str, tuple[int, ...]]:
    """Fingerprint of every watched table, read in one consistent snapshot."""
    out: dict[str, tuple[int, ...]] = {}
    async with conn.cursor() as cur:
        with contextlib.suppress(pymysql.err.MySQLError):
            await cur.execute("SET SESSION wsrep_sync_wait = 1")
        await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            for table in WATCHED:
                try:
                    await cur.execute(fingerprint_sql(table))
                except pymysql.err.ProgrammingError as exc:
                    if exc.args and exc.args[0] == _NO_SUCH_TABLE:
                        out[table] = ()
                        continue
                    raise
                row = await cur.fetchone()
                out[table] = tuple(int(v) for v in row)
        finally:
            await conn.rollback()
    return out


class Watcher:
    """Keeps one connection to a healthy node and tells which watched tables changed."""

    def __init__(self, cfg: DatabaseConfig) -> None:
        self.cfg = cfg
        self.conn: aiomysql.Connection | None = None
        self.node: str = ""
        self.position: str | None = None
        self.prints: dict[str, tuple[int, ...]] | None = None

    async def _connection(self) -> aiomysql.Connection:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        problems = []
        for node in nodes(self.cfg):
            try:
                conn = await connect(self.cfg, node)
            except (pymysql.err.MySQLError, OSError) as exc:
                problems.append(f"{node}: {_describe(exc)}")
                continue
            unfit = await node_health(conn)
            if unfit:
                conn.close()
                problems.append(f"{node}: {unfit}")
                continue
            await conn.autocommit(True)
            self.conn, self.node = conn, str(node)
            return conn
        raise DatabaseError("no healthy database node: " + "; ".join(problems))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    async def changed(self) -> list[str]:
        """Watched tables whose content changed since the last call (all of them the first time).

        Raises DatabaseError (and drops the connection) when no node can answer."""
        try:
            conn = await self._connection()
            if await node_health(conn):
                raise DatabaseError(f"{self.node}: left the synced Primary component")
            position = await commit_position(conn)
            if position is not None and position == self.position and self.prints is not None:
                return []
            prints = await fingerprints(conn)
        except (pymysql.err.MySQLError, OSError) as exc:
            node = self.node
            self.close()
            raise DatabaseError(f"{node}: {_describe(exc)}") from exc
        except DatabaseError:
            self.close()
            raise
        old, self.prints, self.position = self.prints, prints, position
        if old is None:
            return list(prints)
        return [t for t in prints if prints[t] != old.get(t)]
