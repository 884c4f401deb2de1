"""The database edge: connecting to a healthy node and reading one consistent snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
        " broadcast_ip, dns1_ip, dns2_ip, dns3_ip, optional, active, updated_at"
        " FROM ippool WHERE version = '4' AND deleted_at IS NULL ORDER BY id"
    ),
    # DHCPv6 (Kea): upstream's NetGw::makeDhcp6Conf and Endpoint::makeDhcp6All read these
    "ippool6": (
        "SELECT id, netgw_id, type, net, netmask, ip_pool_start, ip_pool_end, router_ip,"
        " dns1_ip, dns2_ip, dns3_ip, prefix, prefix_len, delegated_len, optional"
        " FROM ippool WHERE version = '6' AND deleted_at IS NULL ORDER BY id"
    ),
    "endpoint6": (
        "SELECT id, hostname, mac, ip, prefix FROM endpoint WHERE version = '6'"
        " AND mac IS NOT NULL AND ip IS NOT NULL AND deleted_at IS NULL ORDER BY id"
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
#: No statement provhad sends takes long on a healthy node; a frozen node (hung host, SIGSTOP,
#: powered off) keeps the TCP connection open and never answers, so every statement has a
#: deadline. This one bounds the snapshot's reads and the watcher's fingerprints.
MIN_QUERY_TIMEOUT = 10.0
#: Deadline of a node's status (two SHOW statements answered from memory: health and commit
#: position), which is all a poll reads while nothing changed. Short, so that a frozen node in
#: use is given up within poll interval + POLL_TIMEOUT (3 s with the daemon's 1 s interval).
#: The status is read without a causal wait, so a view change elsewhere cannot stall it.
POLL_TIMEOUT = 2.0
#: A node that failed is not tried first again until it passes a health probe (connect and
#: status within PROBE_TIMEOUT), made in the background PROBE_INTERVAL s after each failure.
#: A node that recovered is in use again (the preferred one first) within about PROBE_INTERVAL.
PROBE_TIMEOUT = 2.0
PROBE_INTERVAL = 3.0
#: TCP keepalive on every connection (idle s, interval s, probes): a peer that vanished without
#: a word (power loss, cable) is detected on an idle connection within about 11 s.
KEEPALIVE = (5, 2, 3)
#: A pooled connection is replaced when older than this share of the server's wait_timeout,
#: long before the server drops it as idle.
RECYCLE_SHARE = 0.5


class DatabaseError(Exception):
    """No node could deliver a snapshot; the message lists each node's problem."""


class Unfit(Exception):
    """A node that answers but must not be read from (not Synced in the Primary component)."""


@dataclass(frozen=True)
class Node:
    """One database endpoint: TCP host/port or a unix socket."""

    host: str
    port: int
    socket: str = ""

    def __str__(self) -> str:
        return self.socket or f"{self.host}:{self.port}"


def query_timeout(cfg: DatabaseConfig) -> float:
    """Deadline of one snapshot or fingerprint statement."""
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


def _keepalive(conn: aiomysql.Connection) -> None:
    """Turn on TCP keepalive (:data:`KEEPALIVE`); aiomysql has no option for it."""
    sock = conn._writer.get_extra_info("socket") if conn._writer is not None else None
    if sock is None or sock.family == socket.AF_UNIX:
        return
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


async def connect(cfg: DatabaseConfig, node: Node) -> aiomysql.Connection:
    """A connection to ``node`` with TCP keepalive; the whole handshake is bounded by
    ``connect_timeout`` (aiomysql bounds only the TCP connect, and a frozen server accepts TCP
    but never greets)."""
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
    conn = await _bounded(aiomysql.connect(**kwargs), cfg.connect_timeout)
    _keepalive(conn)
    return conn


# --- node status: health and commit position ---------------------------------------------------

_VARIABLES = ("wsrep_on", "gtid_binlog_pos", "gtid_slave_pos")
_STATUS = (
    "wsrep_ready",
    "wsrep_cluster_status",
    "wsrep_local_state_comment",
    "wsrep_last_committed",
)


async def node_status(conn: aiomysql.Connection) -> dict[str, str]:
    """What :func:`unfit` and :func:`position` judge, read in two statements (no causal wait
    when the session has none: a poll must not stall while the cluster changes its view)."""
    out: dict[str, str] = {}
    async with conn.cursor() as cur:
        for kind, names in (("VARIABLES", _VARIABLES), ("STATUS", _STATUS)):
            listed = ", ".join(f"'{n}'" for n in names)
            await cur.execute(f"SHOW GLOBAL {kind} WHERE Variable_name IN ({listed})")
            out.update(
                (str(k).lower(), "" if v is None else str(v)) for k, v in await cur.fetchall()
            )
    return out


def unfit(status: dict[str, str]) -> str | None:
    """Why a node with this :func:`node_status` must not be read from, or None when it is fit.

    A plain server (wsrep_on OFF) is fit. A Galera node must be in the Primary component,
    ready and Synced (a Donor, Joiner or Desynced node may lag behind its cluster); a value it
    does not report counts as failing."""
    if status.get("wsrep_on", "OFF").upper() != "ON":
        return None
    # Primary first: a node cut off from its cluster is also not ready, and this says why
    cluster = status.get("wsrep_cluster_status", "unknown")
    if cluster != "Primary":
        return f"not in the Primary component ({cluster})"
    if status.get("wsrep_ready", "OFF").upper() != "ON":
        return "wsrep_ready is OFF"
    state = status.get("wsrep_local_state_comment", "unknown")
    if state != "Synced":
        return f"not Synced ({state})"
    return None


def position(status: dict[str, str]) -> str | None:
    """A value of :func:`node_status` that moves whenever anything commits on the node:
    Galera's wsrep_last_committed, else the GTID positions of the binlog (local commits) and
    of replication (what an async replica applied: without log_slave_updates its binlog never
    moves); None when the server offers none (then every poll fingerprints)."""
    committed = status.get("wsrep_last_committed", "")
    if status.get("wsrep_on", "OFF").upper() == "ON" and committed not in ("", "-1"):
        return f"wsrep:{committed}"
    binlog, applied = status.get("gtid_binlog_pos", ""), status.get("gtid_slave_pos", "")
    if binlog or applied:
        return f"gtid:{binlog}/{applied}"
    return None


async def node_health(conn: aiomysql.Connection) -> str | None:
    """Why the node behind ``conn`` must not be read from, or None (see :func:`unfit`)."""
    return unfit(await node_status(conn))


async def commit_position(conn: aiomysql.Connection) -> str | None:
    """The commit position of the node behind ``conn`` (see :func:`position`)."""
    return position(await node_status(conn))


async def _sync_wait(conn: aiomysql.Connection, causal: bool) -> None:
    """Make the session's reads wait (or not) for what the cluster certified before them."""
    async with conn.cursor() as cur:
        with contextlib.suppress(pymysql.err.MySQLError):  # not a Galera server
            await cur.execute(f"SET SESSION wsrep_sync_wait = {int(causal)}")


async def _open(cfg: DatabaseConfig, node: Node) -> tuple[aiomysql.Connection, dict[str, str]]:
    """A connection to a fit ``node`` and its status; raises Unfit, MySQLError or OSError."""
    conn = await connect(cfg, node)
    try:
        status = await _bounded(node_status(conn), POLL_TIMEOUT)
        reason = unfit(status)
        if reason:
            raise Unfit(reason)
    except BaseException:
        conn.close()
        raise
    return conn, status


_FAILURES = (pymysql.err.MySQLError, OSError, Unfit)


# --- node selection ---------------------------------------------------------------------------


@dataclass
class _Failure:
    reason: str
    probe_at: float  # clock time the next health probe is due


class Cluster:
    """Which node to use, shared by the watcher and the snapshot reads so both use the same one.

    Nodes are used in configured order, the first one preferred. A node that fails is
    remembered and tried only after every other node until it passes a health probe
    (:meth:`probe_due`, run in the background by :meth:`watch`); then it is in use again if it
    comes first. ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, cfg: DatabaseConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.nodes = nodes(cfg)
        self.failures: dict[Node, _Failure] = {}
        self._prober: asyncio.Task[None] | None = None

    def order(self) -> list[Node]:
        """Nodes to try, best first: the healthy ones in configured order, then the failed ones
        (still tried: when every node failed, one of them is all there is)."""
        return [n for n in self.nodes if n not in self.failures] + [
            n for n in self.nodes if n in self.failures
        ]

    @property
    def preferred(self) -> Node:
        """The node to use now."""
        return self.order()[0]

    def failed(self, node: Node, reason: str) -> None:
        """``node`` failed (again): probe it PROBE_INTERVAL s from now."""
        self.failures[node] = _Failure(reason, self.clock() + PROBE_INTERVAL)

    def healthy(self, node: Node) -> None:
        """``node`` answered and is fit."""
        self.failures.pop(node, None)

    def due(self) -> list[Node]:
        """Failed nodes whose health probe is due."""
        now = self.clock()
        return [n for n in self.nodes if n in self.failures and self.failures[n].probe_at <= now]

    def problems(self) -> str:
        return "; ".join(f"{n}: {f.reason}" for n, f in self.failures.items())

    async def attempt(
        self, work: Callable[[Node, aiomysql.Connection, dict[str, str]], Awaitable[T]], what: str
    ) -> T:
        """``work`` on the first node in :meth:`order` that connects, is fit and lets ``work``
        finish; ``work`` owns the connection (closed here when it fails). Raises DatabaseError
        (``what``: each node's problem) when no node did."""
        problems: list[str] = []
        for node in self.order():
            conn = None
            try:
                conn, status = await _open(self.cfg, node)
                result = await work(node, conn, status)
            except _FAILURES as exc:
                if conn is not None:
                    conn.close()
                self.failed(node, _describe(exc))
                problems.append(f"{node}: {_describe(exc)}")
                continue
            self.healthy(node)
            return result
        raise DatabaseError(f"{what}: " + "; ".join(problems))

    async def probe(self, node: Node) -> bool:
        """A health probe of ``node`` within PROBE_TIMEOUT; records the outcome."""
        try:
            conn, _ = await _bounded(_open(self.cfg, node), PROBE_TIMEOUT)
        except _FAILURES as exc:
            self.failed(node, _describe(exc))
            return False
        conn.close()
        self.healthy(node)
        return True

    async def probe_due(self) -> None:
        """Probe every failed node whose probe is due, concurrently."""
        await asyncio.gather(*(self.probe(n) for n in self.due()))

    async def run_probes(self) -> None:
        """Probe failed nodes when due, until none is failed."""
        while self.failures:
            wait = min(f.probe_at for f in self.failures.values()) - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                await self.probe_due()

    def watch(self) -> None:
        """Have failed nodes probed in the background (off the poll's path) while there are
        any; cheap when nothing failed. Needs a running event loop."""
        if self.failures and (self._prober is None or self._prober.done()):
            self._prober = asyncio.get_running_loop().create_task(self.run_probes())

    def close(self) -> None:
        """Stop the background probes."""
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None


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
        await _sync_wait(conn, True)
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


async def read_snapshot(
    cfg: DatabaseConfig,
    cache: RowCache | None = None,
    *,
    full: bool = True,
    cluster: Cluster | None = None,
) -> Snapshot:
    """A snapshot from the first healthy node of ``cluster`` (its :meth:`Cluster.order`; without
    one, the configured order); up to ``SNAPSHOT_ROUNDS`` rounds over the nodes with a backoff
    in between. Raises DatabaseError (the last round's problems) when no node delivered.
    ``cache``: see :func:`read_snapshot_from`."""
    nodes_ = Cluster(cfg) if cluster is None else cluster
    nodes_.watch()
    timeout = query_timeout(cfg)

    async def read(node: Node, conn: aiomysql.Connection, _status: dict[str, str]) -> Snapshot:
        try:
            return await read_snapshot_from(conn, str(node), timeout, cache, full)
        finally:
            conn.close()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(SNAPSHOT_ROUNDS),
        wait=ROUND_BACKOFF,
        retry=retry_if_exception_type(DatabaseError),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await nodes_.attempt(read, "no database node delivered a snapshot")
    finally:
        if cluster is None:
            nodes_.close()
    raise AssertionError("unreachable: tenacity reraises the last DatabaseError")


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
        "max_cpe",
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
        "prefix",
        "prefix_len",
        "delegated_len",
    ),
    "modem": ("hostname", "mac", "public", "internet_access"),
    "mta": ("modem_id", "mac"),
    "endpoint": ("hostname", "mac", "fixed_ip", "ip", "version", "modem_id", "prefix"),
}


#: The columns NMS Prime builds the TFTP configfiles from (``Modem::make_configfile``,
#: ``Mta::make_configfile``, ``Configfile::text_make``): a change runs the configfile hook
#: (provhad.hook), not a rebuild. Fingerprinted in the same scan as WATCHED, under the key
#: ``HOOK_PREFIX + table``. Tables of other modules (contract, qos) are not watched: the
#: periodic rebuild runs the hook as well.
HOOK_WATCHED: dict[str, tuple[str, ...]] = {
    "configfile": ("name", "text", "device", "public", "parent_id", "firmware", "is_dummy"),
    "modem": (
        "hostname",
        "mac",
        "public",
        "internet_access",
        "serial_num",
        "configfile_id",
        "qos_id",
        "contract_id",
    ),
    "mta": ("modem_id", "mac", "hostname", "configfile_id", "type", "is_dummy"),
}
HOOK_PREFIX = "configfile:"


def row_crc_sql(table: str, columns: tuple[str, ...] | None = None) -> str:
    """CRC32 of one row of ``table``: its id, watched columns (or ``columns``) and deleted_at,
    with a separator (text moved from one column to the next changes it) and NULL spelt as a
    NUL character (CONCAT_WS would skip it, so a value moved to a NULL neighbour would not
    change it)."""
    watched = WATCHED[table] if columns is None else columns
    cols = ", ".join(f"IFNULL(`{c}`, '\\0')" for c in ("id", *watched, "deleted_at"))
    return f"CRC32(CONCAT_WS('|', {cols}))"


def fingerprint_sql(table: str) -> str:
    """COUNT, MAX(id) and two order-independent sums of :func:`row_crc_sql` (arithmetic and
    XOR: a change that keeps one keeps the other only by chance): inserts, hard and soft
    deletes and updates within the same second (or that do not touch updated_at at all) all
    change it; no local clock is involved. A table in HOOK_WATCHED gets the two sums over its
    hook columns too, from the same scan."""
    sums = []
    for columns in (WATCHED.get(table), HOOK_WATCHED.get(table)):
        if columns is not None:
            row = row_crc_sql(table, columns)
            sums.append(f"IFNULL(SUM({row}), 0), IFNULL(BIT_XOR({row}), 0)")
    return f"SELECT COUNT(*), IFNULL(MAX(id), 0), {', '.join(sums)} FROM `{table}`"


def _split(table: str, values: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """One fingerprint row as the keys it stands for: ``table`` and/or the hook's key."""
    out: dict[str, tuple[int, ...]] = {}
    at = 2
    if table in WATCHED:
        out[table], at = values[:2] + values[at : at + 2], at + 2
    if table in HOOK_WATCHED:
        out[HOOK_PREFIX + table] = values[:2] + values[at : at + 2]
    return out


async def fingerprints(conn: aiomysql.Connection) -> dict[str, tuple[int, ...]]:
    """Fingerprint of every watched table, read in one consistent snapshot."""
    out: dict[str, tuple[int, ...]] = {}
    await _sync_wait(conn, True)
    async with conn.cursor() as cur:
        await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            for table in dict.fromkeys([*WATCHED, *HOOK_WATCHED]):
                try:
                    await cur.execute(fingerprint_sql(table))
                except pymysql.err.ProgrammingError as exc:
                    if exc.args and exc.args[0] == _NO_SUCH_TABLE:
                        out.update(_split(table, (0, 0, 0, 0, 0, 0)))
                        continue
                    raise
                row = await cur.fetchone()
                out.update(_split(table, tuple(int(v) for v in row)))
        finally:
            await conn.rollback()
    await _sync_wait(conn, False)  # the polls that follow must not wait for the cluster
    return out


class Watcher:
    """Keeps one connection to the node its :class:`Cluster` prefers and tells which watched
    tables changed.

    A poll reads the node's status (health and commit position) within POLL_TIMEOUT and
    fingerprints the tables only when the position moved. A node that fails is given up at once
    for the next one in the cluster's order (within the same call); when the cluster prefers
    another node again (a recovered one that comes first), the watcher moves to it.
    The fingerprints survive reconnects (to the same or another node, or after the whole
    cluster was down), so a change committed while no node answered is reported afterwards.
    """

    def __init__(self, cfg: DatabaseConfig, cluster: Cluster | None = None) -> None:
        self.cfg = cfg
        self.cluster = Cluster(cfg) if cluster is None else cluster
        self._own_cluster = cluster is None
        self.conn: aiomysql.Connection | None = None
        self.node: str = ""
        self._node: Node | None = None
        self.position: str | None = None
        self.prints: dict[str, tuple[int, ...]] | None = None
        #: tables whose configfile inputs changed in the last call of changed()
        self.hook_changes: list[str] = []
        #: clock time the connection was made, and its age at which it is replaced
        self.connected_at = 0.0
        self.max_age = float("inf")
        self.timeout = query_timeout(cfg)

    async def _adopt(
        self, node: Node, conn: aiomysql.Connection, status: dict[str, str]
    ) -> dict[str, str]:
        await conn.autocommit(True)
        await _bounded(_sync_wait(conn, False), POLL_TIMEOUT)
        wait_timeout = await _bounded(_wait_timeout(conn), POLL_TIMEOUT)
        self.conn, self._node, self.node = conn, node, str(node)
        self.connected_at = self.cluster.clock()
        self.max_age = wait_timeout * RECYCLE_SHARE if wait_timeout > 0 else float("inf")
        # another node (or a re-bootstrapped cluster) may number its commits alike: compare
        # content once before trusting the position again
        self.position = None
        return status

    async def _status(self) -> dict[str, str]:
        """The status of a fit node, connecting (or moving) to the cluster's choice as needed."""
        if self.conn is not None and (
            self.conn.closed
            or self._node != self.cluster.preferred
            or self.cluster.clock() - self.connected_at >= self.max_age  # before the server
        ):  # drops it as idle (an error on the next poll)
            self.close()
        if self.conn is not None and self._node is not None:
            try:
                status = await _bounded(node_status(self.conn), POLL_TIMEOUT)
                reason = unfit(status)
                if reason is None:
                    return status
                raise Unfit(reason)
            except _FAILURES as exc:
                self.cluster.failed(self._node, _describe(exc))
                self.close()
        return await self.cluster.attempt(self._adopt, "no healthy database node")

    def close(self) -> None:
        """Drop the connection (and stop the probes of a cluster this watcher made)."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        if self._own_cluster:
            self.cluster.close()

    async def changed(self) -> list[str]:
        """Watched tables whose content changed since the last call (all of them the first time).
        The tables whose configfile inputs (HOOK_WATCHED) changed are left in
        :attr:`hook_changes`.

        Raises DatabaseError (and drops the connection) when no node can answer."""
        self.hook_changes = []
        self.cluster.watch()
        status = await self._status()
        pos = position(status)
        if pos is not None and pos == self.position and self.prints is not None:
            return []
        assert self.conn is not None and self._node is not None
        try:
            prints = await _bounded(fingerprints(self.conn), self.timeout)
        except _FAILURES as exc:
            node = self._node
            self.cluster.failed(node, _describe(exc))
            self.close()
            raise DatabaseError(f"{node}: {_describe(exc)}") from exc
        old, self.prints, self.position = self.prints, prints, pos
        moved = [t for t in prints if old is None or prints[t] != old.get(t)]
        self.hook_changes = [
            t.removeprefix(HOOK_PREFIX) for t in moved if t.startswith(HOOK_PREFIX)
        ]
        return [t for t in moved if not t.startswith(HOOK_PREFIX)]
