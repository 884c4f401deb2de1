"""The database edge: connecting to a healthy node and reading one consistent snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomysql
import pymysql
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from provhad.config import DatabaseConfig
from provhad.snapshot import PackedRows, Row, Snapshot, Table

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
}


@dataclass(frozen=True)
class BigTable:
    """A table that grows with the network, read whole or by chunks of ids."""

    select: str  # the select list, in snapshot.*_COLUMNS order
    source: str  # FROM ... WHERE ...
    key: str  # the id column, in the source's terms

    def query(self, where: str = "") -> str:
        return f"SELECT {self.select} FROM {self.source}{where} ORDER BY {self.key}"

    def fingerprints(self) -> str:
        """Per chunk of ids: (chunk, rows, XOR of the rows' CRC32s)."""
        # QUOTE keeps NULL apart from 'NULL' and from a shifted neighbour; the id is in
        # every row, so two rows never cancel out.
        row = ", ".join(f"QUOTE({c.split(' AS ')[0].strip()})" for c in self.select.split(","))
        return (
            f"SELECT {self.key} DIV {CHUNK_IDS}, COUNT(*), BIT_XOR(CRC32(CONCAT_WS(',', {row})))"
            f" FROM {self.source} GROUP BY 1"
        )


#: Ids per chunk of a big table: what an incremental read re-reads around one change.
CHUNK_IDS = 4096
#: Chunk ranges per statement when re-reading (keeps statements short).
RANGES_PER_QUERY = 256
BIG: dict[str, BigTable] = {
    "modem": BigTable(
        "id, hostname, mac, public, internet_access", "modem WHERE deleted_at IS NULL", "id"
    ),
    "mta": BigTable("id, modem_id, mac", "mta WHERE deleted_at IS NULL", "id"),
    "endpoint": BigTable(
        "e.id, e.hostname, e.mac, e.fixed_ip, e.ip, m.mac AS modemmac",
        "endpoint e JOIN modem m ON m.id = e.modem_id"
        " WHERE e.version = '4' AND e.deleted_at IS NULL",
        "e.id",
    ),
}
QUERIES.update((name, big.query()) for name, big in BIG.items())

FIXED_IPS = "SELECT ip FROM endpoint WHERE fixed_ip = 1 AND ip IS NOT NULL AND deleted_at IS NULL"
_NO_SUCH_TABLE = 1146
T = TypeVar("T")

#: Rounds over all nodes before read_snapshot gives up (the daemon retries on its next trigger),
#: with an exponential pause between rounds: a cluster in the middle of a view change
#: (a node just died, the others are evicting it) is usually whole again within a second.
SNAPSHOT_ROUNDS = 3
ROUND_BACKOFF = wait_exponential(multiplier=0.25, max=2.0)
#: No statement provhad sends takes long on a healthy node; a frozen node (hung host, SIGSTOP)
#: keeps the TCP connection open and never answers, so every statement has a deadline.
MIN_QUERY_TIMEOUT = 10.0
#: A pooled connection is replaced when older than this share of the server's wait_timeout,
#: long before the server drops it as idle.
RECYCLE_SHARE = 0.5


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


def query_timeout(cfg: DatabaseConfig) -> float:
    """Deadline of one statement (or of one small group of probes)."""
    return max(MIN_QUERY_TIMEOUT, 3 * cfg.connect_timeout)


async def _bounded(aw: Awaitable[T], timeout: float) -> T:
    """``aw`` within ``timeout`` s; a TimeoutError (an OSError) saying so otherwise."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError as exc:
        raise TimeoutError(f"no answer within {timeout:g} s") from exc


def nodes(cfg: DatabaseConfig) -> list[Node]:
    """The configured nodes in order; a socket (NMS Prime's DB_SOCKET) comes first."""
    out = [Node("localhost", 0, cfg.socket)] if cfg.socket else []
    out.extend(Node(h, p) for h, p in cfg.endpoints())
    return out


async def connect(cfg: DatabaseConfig, node: Node) -> aiomysql.Connection:
    """A connection to ``node``; the whole handshake is bounded by ``connect_timeout`` (aiomysql
    bounds only the TCP connect, and a frozen server accepts TCP but never greets)."""
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
    return await _bounded(aiomysql.connect(**kwargs), cfg.connect_timeout)


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
    # Primary first: a node cut off from its cluster is also not ready, and this says why
    if status.get("wsrep_cluster_status", "Primary") != "Primary":
        return f"not in the Primary component ({status['wsrep_cluster_status']})"
    if status.get("wsrep_ready", "ON") != "ON":
        return "wsrep_ready is OFF"
    if status.get("wsrep_local_state_comment", "Synced") != "Synced":
        return f"not Synced ({status['wsrep_local_state_comment']})"
    return None


async def _rows(cur: Any, sql: str, timeout: float) -> Sequence[Row]:
    """The rows of ``sql`` as dicts, or as a :class:`Table` for a tuple cursor."""

    async def run() -> Sequence[Row]:
        await cur.execute(sql)
        rows = list(await cur.fetchall())
        if isinstance(cur, aiomysql.DictCursor):
            return rows
        return Table([d[0] for d in cur.description or ()], rows)

    return await _bounded(run(), timeout)


Chunk = tuple[tuple[int, int], bytes]  # ((rows, crc), the rows marshalled)


@dataclass
class RowCache:
    """The big tables of the last snapshot, per chunk of ids with each chunk's fingerprint.

    An incremental read asks the database for the fingerprints (one aggregate statement per
    table, inside the snapshot's transaction) and re-reads only the chunks whose fingerprint
    changed; the others are taken from here. Content equal to a full read, at a fraction of
    the rows transferred. A CRC collision could hide a change in a chunk until the next full
    read, which the daemon does at startup, on SIGHUP and at every periodic rebuild.
    """

    chunks: dict[str, dict[int, Chunk]] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: What the last read did per table: chunks re-read and chunks in all.
    last_read: dict[str, tuple[int, int]] = field(default_factory=dict)


def _group(rows: Iterable[tuple[Any, ...]]) -> dict[int, list[tuple[Any, ...]]]:
    """Rows (ordered by id, id first) per chunk of ids; ``//`` agrees with SQL's ``DIV``
    because the ids are unsigned (schema.sql)."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(int(row[0]) // CHUNK_IDS, []).append(row)
    return out


async def _read_big(
    cur: Any, name: str, cache: RowCache, full: bool, timeout: float
) -> tuple[Table, dict[int, Chunk], tuple[str, ...]]:
    """One big table through ``cache`` (not modified): the table, its new chunks, columns."""
    big = BIG[name]
    await _bounded(cur.execute(big.fingerprints()), timeout)
    prints = {int(k): (int(n), int(crc)) for k, n, crc in await cur.fetchall()}
    old = None if full else cache.chunks.get(name)
    columns = cache.columns.get(name, ())
    if old is None or not columns:
        stale = sorted(prints)
        table = await _rows(cur, big.query(), timeout)
        assert isinstance(table, Table)
        fresh, columns = _group(table.rows), table.columns
    else:
        stale = sorted(k for k, fp in prints.items() if k not in old or old[k][0] != fp)
        fresh = {}
        for at in range(0, len(stale), RANGES_PER_QUERY):
            ranges = " OR ".join(
                f"{big.key} BETWEEN {k * CHUNK_IDS} AND {(k + 1) * CHUNK_IDS - 1}"
                for k in stale[at : at + RANGES_PER_QUERY]
            )
            part = await _rows(cur, big.query(f" AND ({ranges})"), timeout)
            assert isinstance(part, Table)
            fresh.update(_group(part.rows))
    chunks: dict[int, Chunk] = {}
    for k in sorted(prints):
        if k in fresh:
            # the columns are ints, strings and NULLs: all marshal takes
            chunks[k] = (prints[k], marshal.dumps(fresh[k]))
        elif old is not None and k in old and old[k][0] == prints[k]:
            chunks[k] = old[k]
        else:  # in no consistent snapshot: the fingerprint and the rows are one transaction
            raise pymysql.err.InternalError(f"{name}: chunk {k} fingerprinted but not read")
    cache.last_read[name] = (len(stale), len(prints))
    rows: PackedRows[tuple[Any, ...]] = PackedRows(
        [blob for _, blob in chunks.values()], sum(n for (n, _), _ in chunks.values())
    )
    return Table(columns, rows), chunks, columns


async def read_snapshot_from(
    conn: aiomysql.Connection,
    node: str = "",
    timeout: float = MIN_QUERY_TIMEOUT,
    cache: RowCache | None = None,
    full: bool = True,
) -> Snapshot:
    """All tables in one read-only transaction with a consistent snapshot (each statement
    bounded by ``timeout``; the connection is unusable after a timeout).

    With a ``cache``, the big tables are read through it (incrementally unless ``full``) and
    it is updated once the whole snapshot was read.
    """
    async with conn.cursor(aiomysql.DictCursor) as cur, conn.cursor() as big:
        # causal read: see every commit the cluster has certified before this point
        with contextlib.suppress(pymysql.err.MySQLError):  # not a Galera server
            await cur.execute("SET SESSION wsrep_sync_wait = 1")
        await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            tables: dict[str, Sequence[Row]] = {}
            updates: dict[str, tuple[dict[int, Chunk], tuple[str, ...]]] = {}
            for table, sql in QUERIES.items():
                try:
                    if cache is not None and table in BIG:
                        tables[table], chunks, columns = await _read_big(
                            big, table, cache, full, timeout
                        )
                        updates[table] = (chunks, columns)
                    elif table in BIG:
                        full_table = await _rows(big, sql, timeout)
                        assert isinstance(full_table, Table)
                        tables[table] = Table(full_table.columns, PackedRows.pack(full_table.rows))
                    else:
                        tables[table] = await _rows(cur, sql, timeout)
                except pymysql.err.ProgrammingError as exc:
                    # ProvVoip (provvoip, mta) is an optional NMS Prime module
                    if table in ("provvoip", "mta") and exc.args and exc.args[0] == _NO_SUCH_TABLE:
                        tables[table] = []
                    else:
                        raise
            fixed = [str(r["ip"]) for r in await _rows(cur, FIXED_IPS, timeout)]
        finally:
            await conn.rollback()
    if cache is not None:
        for table, (chunks, columns) in updates.items():
            cache.chunks[table], cache.columns[table] = chunks, columns
        for table in BIG.keys() - updates.keys():  # a missing optional table (mta)
            cache.chunks.pop(table, None)
    return Snapshot(**tables, fixed_ips=fixed, node=node)


async def _snapshot_round(cfg: DatabaseConfig, cache: RowCache | None, full: bool) -> Snapshot:
    """One pass over the nodes in order: the first healthy one that answers delivers."""
    problems: list[str] = []
    timeout = query_timeout(cfg)
    for node in nodes(cfg):
        try:
            conn = await connect(cfg, node)
        except (pymysql.err.MySQLError, OSError) as exc:
            problems.append(f"{node}: {_describe(exc)}")
            continue
        try:
            unfit = await _bounded(node_health(conn), timeout)
            if unfit:
                problems.append(f"{node}: {unfit}")
                continue
            return await read_snapshot_from(conn, str(node), timeout, cache, full)
        except (pymysql.err.MySQLError, OSError) as exc:
            problems.append(f"{node}: {_describe(exc)}")
        finally:
            conn.close()
    raise DatabaseError("no database node delivered a snapshot: " + "; ".join(problems))


async def read_snapshot(
    cfg: DatabaseConfig, cache: RowCache | None = None, *, full: bool = True
) -> Snapshot:
    """A snapshot from the first healthy node, trying each configured node in order; up to
    ``SNAPSHOT_ROUNDS`` rounds with a backoff in between. Raises DatabaseError (the last
    round's problems) when no node delivered. ``cache``: see :func:`read_snapshot_from`."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(SNAPSHOT_ROUNDS),
        wait=ROUND_BACKOFF,
        retry=retry_if_exception_type(DatabaseError),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await _snapshot_round(cfg, cache, full)
    raise AssertionError("unreachable: tenacity reraises the last DatabaseError")


async def _causal_reads(conn: aiomysql.Connection) -> None:
    """Make SELECT and SHOW (the commit position too) wait for what the cluster committed."""
    async with conn.cursor() as cur:
        with contextlib.suppress(pymysql.err.MySQLError):  # not a Galera server
            await cur.execute("SET SESSION wsrep_sync_wait = 1")


async def _wait_timeout(conn: aiomysql.Connection) -> float:
    """The session's wait_timeout in seconds (0: unknown)."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT @@SESSION.wait_timeout")
        row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


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
    """Keeps one connection to a healthy node and tells which watched tables changed.

    The fingerprints survive reconnects (to the same or another node, or after the whole
    cluster was down), so a change committed while no node answered is reported afterwards.
    """

    def __init__(self, cfg: DatabaseConfig) -> None:
        self.cfg = cfg
        self.conn: aiomysql.Connection | None = None
        self.node: str = ""
        self.position: str | None = None
        self.prints: dict[str, tuple[int, ...]] | None = None
        #: monotonic time the connection was made, and its age at which it is replaced
        self.connected_at = 0.0
        self.max_age = float("inf")
        self.timeout = query_timeout(cfg)

    async def _connection(self) -> aiomysql.Connection:
        if self.conn is not None and not self.conn.closed:
            if time.monotonic() - self.connected_at < self.max_age:
                return self.conn
            self.close()  # before the server drops it as idle (an error on the next poll)
        problems = []
        for node in nodes(self.cfg):
            try:
                conn = await connect(self.cfg, node)
            except (pymysql.err.MySQLError, OSError) as exc:
                problems.append(f"{node}: {_describe(exc)}")
                continue
            try:
                unfit = await _bounded(node_health(conn), self.timeout)
                if not unfit:
                    await conn.autocommit(True)
                    await _bounded(_causal_reads(conn), self.timeout)
                    wait_timeout = await _bounded(_wait_timeout(conn), self.timeout)
            except (pymysql.err.MySQLError, OSError) as exc:
                unfit = _describe(exc)
            if unfit:
                conn.close()
                problems.append(f"{node}: {unfit}")
                continue
            self.conn, self.node = conn, str(node)
            self.connected_at = time.monotonic()
            self.max_age = wait_timeout * RECYCLE_SHARE if wait_timeout > 0 else float("inf")
            # another node (or a re-bootstrapped cluster) may number its commits alike: compare
            # content once before trusting the position again
            self.position = None
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
            unfit = await _bounded(node_health(conn), self.timeout)
            if unfit:
                raise DatabaseError(f"{self.node}: {unfit}")
            position = await _bounded(commit_position(conn), self.timeout)
            if position is not None and position == self.position and self.prints is not None:
                return []
            prints = await _bounded(fingerprints(conn), self.timeout)
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
