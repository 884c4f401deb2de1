"""Throwaway MariaDB and Mosquitto servers for the tests, the demo and the benchmarks.

This is the only module of provhad that starts servers. Everything is synchronous;
callers that live in an event loop wrap it in ``asyncio.to_thread``.

Each server runs from its own directory on a free 127.0.0.1 port, in its own process
group (so a Ctrl-C in the terminal reaches the test runner, which then stops the server
cleanly, instead of killing the server mid-test), and never touches the system-wide
instance or its configuration.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import pymysql
from pymysql.constants import CLIENT

__all__ = [
    "GaleraCluster",
    "GaleraNode",
    "MariaDB",
    "Mosquitto",
    "ScratchDatabase",
    "TestbedError",
    "free_port",
]

#: Generous: a cold start on a loaded CI machine can take many seconds.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}")


class TestbedError(RuntimeError):
    """A throwaway server could not be started or prepared."""

    __test__ = False  # not a pytest test class despite the name


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Another process may take it before the caller binds it; the servers below
    retry on a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _executable(name: str) -> str:
    """Find a server binary; the sbin directories are often missing from a user's PATH."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise TestbedError(f"{name} not found; run scripts/bootstrap to install it")
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _wait_for(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float
) -> None:
    """Poll ``ready`` until it holds; fail early if the process exits, late on the deadline."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise TestbedError(f"{what} exited with status {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TestbedError(f"{what} not ready after {timeout:.0f}s:\n{_tail(log)}")
        time.sleep(_POLL_INTERVAL)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (both servers shut down cleanly on it), SIGKILL the group after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _port_in_use(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "Address already in use" in text or "Do you already have another" in text


class _Server:
    """What the throwaway servers share: a child process, ``running``, ``with`` support."""

    _proc: subprocess.Popen[bytes] | None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _accepts(self) -> bool:
        raise NotImplementedError

    def _spawn(self, argv: list[str], name: str, log: Path, output: Any) -> None:
        """Start the server in its own session and wait until it accepts clients; a server that
        never does is killed, and the error names the end of its log."""
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not subprocess.DEVNULL else subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_for(self._accepts, self._proc, name, log, START_TIMEOUT)
        except BaseException:
            _terminate(self._proc, STOP_TIMEOUT)
            self._proc = None
            raise

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class ScratchDatabase:
    """One database loaded with a schema, with a SELECT-only user (see ``MariaDB.scratch``)."""

    host: str
    port: int
    socket: Path
    name: str
    ro_user: str
    ro_password: str
    #: root, autocommit, bound to ``name``: for inserting test rows.
    admin: pymysql.Connection

    def ro_connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomysql.connect``/``create_pool`` as the read-only user."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.ro_user,
            "password": self.ro_password,
            "db": self.name,
        }


@dataclass
class MariaDB(_Server):
    """A throwaway mariadbd in its own datadir, on a free 127.0.0.1 TCP port and a unix socket.

    ``root`` has no password and may log in over the socket or from 127.0.0.1. ``stop()``
    keeps the datadir, so ``start()`` again restarts the same server on the same port
    (e.g. to test how a client copes with the database going away).
    """

    host: ClassVar[str] = "127.0.0.1"
    base: Path
    port: int = 0  # 0: pick a free one
    binlog: bool = False
    server_id: int = 1
    extra_args: tuple[str, ...] = ()
    socket: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _port_fixed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base = self.base.resolve()
        self.socket = self.base / "mysqld.sock"
        if len(os.fsencode(self.socket)) > _MAX_SOCKET_PATH:
            raise TestbedError(f"socket path too long for a unix socket: {self.socket}")
        self._port_fixed = self.port != 0
        if not self._port_fixed:
            self.port = free_port()

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def error_log(self) -> Path:
        return self.base / "error.log"

    def _server_args(self) -> list[str]:
        """Options shared by the bootstrap and the server (the InnoDB log size must match)."""
        args = [
            "--no-defaults",  # never read /etc/mysql: it points at the system datadir
            f"--datadir={self.datadir}",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=16M",  # default 96M: slow to create, pointless here
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--innodb-autoextend-increment=8",  # MB; default 64: tmp dirs pile up on disk
            # io_uring/libaio are often unavailable in containers (seccomp, aio-max-nr).
            "--innodb-use-native-aio=0",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
        ]
        if os.geteuid() == 0:
            # mariadbd refuses to run as root unless told to; the datadir is root's temp dir.
            args.append("--user=root")
        return args

    def start(self) -> None:
        """Initialise the datadir if needed, start mariadbd and wait until it accepts queries."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._install_db()
        for _attempt in range(5):
            try:
                self._launch()
                break
            except TestbedError:
                # The free port was taken between free_port() and the bind: take another.
                if self._port_fixed or not _port_in_use(self.error_log):
                    raise
                self.port = free_port()
        self._port_fixed = True  # a restart must come back where clients expect it

    def _install_db(self) -> None:
        log = self.base / "install.log"
        with log.open("wb") as out:
            rc = subprocess.call(
                [
                    _executable("mariadb-install-db"),
                    *self._server_args(),
                    "--auth-root-authentication-method=normal",  # root: no password, any OS user
                    "--skip-test-db",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=START_TIMEOUT,
            )
        if rc != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)  # so a retry starts afresh
            raise TestbedError(f"mariadb-install-db failed ({rc}):\n{_tail(log)}")

    def _launch(self) -> None:
        args = [
            _executable("mariadbd"),
            *self._server_args(),
            "--skip-networking=0",
            f"--bind-address={self.host}",
            f"--port={self.port}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
        ]
        if self.binlog:
            args += [
                f"--log-bin={self.base / 'binlog'}",
                f"--server-id={self.server_id}",
                "--binlog-format=ROW",
            ]
        else:
            args.append("--skip-log-bin")
        args += self.extra_args
        self._spawn(args, "mariadbd", self.error_log, subprocess.DEVNULL)

    def _accepts(self) -> bool:
        try:
            self.admin(connect_timeout=1).close()
        except pymysql.err.OperationalError:
            return False
        return True

    def stop(self, graceful: bool = True) -> None:
        """Shut down (``graceful=False``: SIGKILL, like a crash); the datadir stays."""
        if self._proc is None:
            return
        if graceful:
            _terminate(self._proc, STOP_TIMEOUT)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def admin(self, database: str | None = None, **kwargs: Any) -> pymysql.Connection:
        """A new ``pymysql.Connection`` as root over the unix socket, in autocommit mode."""
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            password="",
            database=database,
            autocommit=True,
            charset="utf8mb4",
            **kwargs,
        )

    def create_database(self, name: str, schema_sql: Path) -> None:
        """Create database ``name`` and run every statement of ``schema_sql`` in it."""
        _check_identifier(name)
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        # The server splits the script itself, so comments and quoting are handled exactly
        # as the mariadb client would; each statement's error surfaces in nextset().
        with self.admin(name, client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
            cur.execute(schema_sql.read_text())
            while cur.nextset():
                pass

    def create_readonly_user(self, db: str, user: str, password: str) -> None:
        """Create ``user`` (local socket and 127.0.0.1) allowed nothing but SELECT on ``db``."""
        _check_identifier(db)
        with self.admin() as conn, conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute(f"GRANT SELECT ON `{db}`.* TO %s@%s", (user, host))

    def drop_database(self, name: str, users: tuple[str, ...] = ()) -> None:
        """Drop database ``name`` and the given users (both hosts); missing ones are ignored."""
        _check_identifier(name)
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            for user in users:
                for host in ("127.0.0.1", "localhost"):
                    cur.execute("DROP USER IF EXISTS %s@%s", (user, host))

    def replicate_from(self, primary: MariaDB) -> None:
        """Become an async replica of ``primary`` (started with ``binlog``), by GTID from its
        first binlog event, as root over TCP. Without ``--log-slave-updates`` (MariaDB's
        default) what this server applies never reaches its own binlog."""
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = 'root',"
                " MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos",
                (primary.host, primary.port),
            )
            cur.execute("START SLAVE")

    def wait_replicated(self, primary: MariaDB, timeout: float = START_TIMEOUT) -> None:
        """Until this replica applied everything ``primary`` had committed at the call."""
        with primary.admin() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            row = cur.fetchone()
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (row[0] if row else "", timeout))
            waited = cur.fetchone()
            if waited is None or waited[0] != 0:
                cur.execute("SHOW SLAVE STATUS")
                raise TestbedError(f"replica behind after {timeout:.0f}s: {cur.fetchone()}")

    @contextlib.contextmanager
    def scratch(self, schema_sql: Path, prefix: str = "nms") -> Iterator[ScratchDatabase]:
        """A fresh, uniquely named database with ``schema_sql`` and a SELECT-only user.

        Dropped, with its user, on exit.
        """
        token = secrets.token_hex(6)
        name, user, password = f"{prefix}_{token}", f"ro_{token}", secrets.token_hex(12)
        try:
            self.create_database(name, schema_sql)
            self.create_readonly_user(name, user, password)
            with self.admin(name) as admin:
                yield ScratchDatabase(
                    host=self.host,
                    port=self.port,
                    socket=self.socket,
                    name=name,
                    ro_user=user,
                    ro_password=password,
                    admin=admin,
                )
        finally:
            if self.running:  # a test may have stopped the server on purpose
                self.drop_database(name, users=(user,))


def _check_identifier(name: str) -> None:
    # Database names are interpolated into SQL (they cannot be bound as parameters).
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")


# MQTT 3.1.1: CONNECT (clean session, keep-alive 60 s, empty client id), its CONNACK
# "accepted", and DISCONNECT.
_MQTT_CONNECT = bytes([0x10, 12, 0, 4, *b"MQTT", 4, 0x02, 0, 60, 0, 0])
_MQTT_CONNACK_OK = bytes([0x20, 2, 0, 0])
_MQTT_DISCONNECT = bytes([0xE0, 0])


@dataclass
class Mosquitto(_Server):
    """A throwaway mosquitto on a free 127.0.0.1 port, anonymous access, no persistence.

    ``stop()`` then ``start()`` restarts it on the same port.
    """

    host: ClassVar[str] = "127.0.0.1"
    base: Path
    port: int = 0  # 0: pick a free one
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _port_fixed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base = self.base.resolve()
        self._port_fixed = self.port != 0
        if not self._port_fixed:
            self.port = free_port()

    @property
    def log(self) -> Path:
        return self.base / "mosquitto.log"

    def start(self) -> None:
        """Start mosquitto and wait until it accepts an MQTT connection."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            try:
                self._launch()
                break
            except TestbedError:
                if self._port_fixed or not _port_in_use(self.log):
                    raise
                self.port = free_port()
        self._port_fixed = True

    def _launch(self) -> None:
        conf = self.base / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type all",
        ]
        if os.geteuid() == 0:
            # Otherwise it drops to the 'mosquitto' user, which need not exist on a dev box.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        with self.log.open("wb") as log:
            self._spawn([_executable("mosquitto"), "-c", str(conf)], "mosquitto", self.log, log)

    def _accepts(self) -> bool:
        # An MQTT handshake, not just a TCP connect: whoever holds a port that mosquitto
        # failed to bind would accept the connection too.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                conn.sendall(_MQTT_CONNECT)
                ok = conn.recv(4) == _MQTT_CONNACK_OK
                conn.sendall(_MQTT_DISCONNECT)
        except OSError:
            return False
        return ok

    def stop(self) -> None:
        """Shut down (SIGTERM, SIGKILL after a bounded wait)."""
        if self._proc is not None:
            _terminate(self._proc, STOP_TIMEOUT)
            self._proc = None


# --- a three-node Galera cluster ----------------------------------------------------------------

GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
#: Failure detection in seconds rather than the default 5-15 s, so tests that kill or freeze a
#: node wait for the eviction briefly (keepalive <= check period <= suspect <= inactive).
_EVS_TIMING = (
    "evs.keepalive_period=PT0.3S; evs.inactive_check_period=PT0.3S; "
    "evs.suspect_timeout=PT1.5S; evs.inactive_timeout=PT3S; evs.install_timeout=PT3S; "
    "gmcast.peer_timeout=PT2S"
)
_RECOVERED = re.compile(r"WSREP: Recovered position: [0-9a-f-]+:(-?\d+)")
#: Starts of a joining node before its failure counts (see GaleraNode.start).
JOIN_ATTEMPTS = 2


def _chown_mysql(path: Path) -> None:
    """Hand ``path`` to the ``mysql`` user the cluster's servers run as (when we are root)."""
    if os.geteuid() != 0:
        return
    import pwd  # only here: the other servers never change user

    user = pwd.getpwnam("mysql")
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)


@dataclass
class GaleraNode(MariaDB):
    """One mariadbd of a :class:`GaleraCluster`, running as ``mysql`` (when started by root).

    Only the seed node is initialised with mariadb-install-db; the others join with an empty
    datadir and receive a full copy by rsync SST. ``stop(graceful=False)`` is a SIGKILL.
    """

    index: int = 0
    gcomm_port: int = 0
    ist_port: int = 0
    sst_port: int = 0
    cluster_name: str = "provhad"
    peers: tuple[int, ...] = ()  # gcomm ports of all nodes (this one included)
    new_cluster: bool = False  # the next start bootstraps a new Primary component

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gcomm_port", "ist_port", "sst_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())

    @property
    def cnf(self) -> Path:
        return self.base / "my.cnf"

    @property
    def grastate(self) -> Path:
        return self.datadir / "grastate.dat"

    def _server_args(self) -> list[str]:
        # A defaults file rather than --no-defaults: the SST script (run by mariadbd) reads
        # the node's settings back from it with my_print_defaults.
        return [f"--defaults-file={self.cnf}"]

    def _write_cnf(self) -> None:
        provider_options = (
            f"base_port={self.gcomm_port}; gmcast.listen_addr=tcp://{self.host}:{self.gcomm_port}; "
            f"ist.recv_addr={self.host}:{self.ist_port}; gcache.size=32M; {_EVS_TIMING}"
        )
        address = ",".join(f"{self.host}:{p}" for p in self.peers)
        lines = [
            "[mysqld]",
            "user=mysql",
            f"datadir={self.datadir}",
            f"socket={self.socket}",
            "innodb-buffer-pool-size=64M",
            "innodb-log-file-size=16M",
            "innodb-flush-log-at-trx-commit=2",
            "innodb-doublewrite=0",
            "innodb-autoextend-increment=8",
            "innodb-use-native-aio=0",
            "innodb-autoinc-lock-mode=2",
            "default-storage-engine=InnoDB",
            "binlog-format=ROW",
            "skip-name-resolve",
            "character-set-server=utf8mb4",
            "wsrep-on=ON",
            f"wsrep-provider={GALERA_PROVIDER}",
            f"wsrep-cluster-name={self.cluster_name}",
            f"wsrep-cluster-address=gcomm://{address}",
            f"wsrep-node-name=node{self.index + 1}",
            f"wsrep-node-address={self.host}",
            f'wsrep-provider-options="{provider_options}"',
            "wsrep-sst-method=rsync",
            f"wsrep-sst-receive-address={self.host}:{self.sst_port}",
            "wsrep-slave-threads=2",
        ]
        self.cnf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start this node (bootstrapping a new cluster if ``new_cluster``); wait until Synced."""
        if self.running:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        self._write_cnf()
        self.extra_args = ("--wsrep-new-cluster",) if self.new_cluster else ()
        if not (self.datadir / "mysql").is_dir():
            if self.new_cluster:
                self._install_db()
            else:
                self.datadir.mkdir(exist_ok=True)  # filled by SST from a donor
        _chown_mysql(self.base)
        # A joiner that loses the cluster during its state transfer aborts (Galera's
        # ReplicatorSMM::abort; the tests' short failure detection makes that likelier on a
        # busy machine). An operator starts it again; so does the testbed, once.
        attempts = 1 if self.new_cluster else JOIN_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                break
            except TestbedError as exc:
                if attempt == attempts or "exited with status" not in str(exc):
                    raise
        self.new_cluster = False

    def _install_db(self) -> None:
        log = self.base / "install.log"
        with log.open("wb") as out:
            rc = subprocess.call(
                [
                    _executable("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--user=mysql",
                    "--innodb-log-file-size=16M",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=START_TIMEOUT,
            )
        if rc != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise TestbedError(f"mariadb-install-db failed ({rc}):\n{_tail(log)}")

    def _accepts(self) -> bool:
        """Ready means Synced in the Primary component, not merely answering."""
        try:
            return self.health() == ("ON", "Primary", "Synced")
        except pymysql.err.MySQLError:
            return False

    def health(self) -> tuple[str, str, str]:
        """(wsrep_ready, wsrep_cluster_status, wsrep_local_state_comment) as the node says."""
        with self.admin(connect_timeout=1, read_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name IN"
                " ('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')"
            )
            status = {str(k): str(v) for k, v in cur.fetchall()}
        return (
            status.get("wsrep_ready", ""),
            status.get("wsrep_cluster_status", ""),
            status.get("wsrep_local_state_comment", ""),
        )

    def kill(self) -> None:
        """SIGKILL, like a crash or a power loss of this node."""
        self.stop(graceful=False)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise TestbedError(f"node{self.index + 1} is not running")
        os.killpg(self._proc.pid, sig)

    def sigstop(self) -> None:
        """Freeze the node: it keeps its sockets but answers nothing (a hung host)."""
        self._signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        self._signal(signal.SIGCONT)

    def isolate(self, on: bool = True) -> None:
        """Cut this (running) node off the group traffic: it becomes non-Primary but answers."""
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"SET GLOBAL wsrep_provider_options = 'gmcast.isolate={int(on)}'")

    def recovered_seqno(self) -> int:
        """The last committed seqno, recovered from InnoDB of a stopped node."""
        log = self.base / "recover.log"
        log.unlink(missing_ok=True)
        subprocess.run(
            [
                _executable("mariadbd"),
                *self._server_args(),
                "--wsrep-recover",
                f"--log-error={log}",
                f"--pid-file={self.base / 'recover.pid'}",
                "--skip-networking",
                f"--socket={self.base / 'recover.sock'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        found = _RECOVERED.findall(log.read_text(errors="replace")) if log.exists() else []
        return int(found[-1]) if found else -1

    def mark_safe_to_bootstrap(self) -> None:
        """What an operator does after a full-cluster crash on the most advanced node."""
        text = self.grastate.read_text()
        self.grastate.write_text(re.sub(r"safe_to_bootstrap:\s*\d", "safe_to_bootstrap: 1", text))


class GaleraCluster:
    """Three (``size``) Galera nodes on 127.0.0.1, each with its own SQL, gcomm, IST and SST
    port, running as ``mysql``; ``base`` None makes a fresh directory under the system temp
    dir (pytest's are private to root, and mysql must traverse to its datadir), removed by
    ``close()``.
    """

    def __init__(self, base: Path | None = None, size: int = 3) -> None:
        self._own_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="provhad-galera-")) if base is None else base
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        gcomm = tuple(free_port() for _ in range(size))
        name = f"provhad-{secrets.token_hex(4)}"
        self.nodes = [
            GaleraNode(
                self.base / f"n{i + 1}",
                port=free_port(),
                index=i,
                gcomm_port=gcomm[i],
                cluster_name=name,
                peers=gcomm,
            )
            for i in range(size)
        ]

    def __getitem__(self, index: int) -> GaleraNode:
        return self.nodes[index]

    def start(self) -> None:
        """Bootstrap the first node, then join the others one by one (one SST at a time)."""
        self.nodes[0].new_cluster = True
        for node in self.nodes:
            node.start()

    @property
    def hosts(self) -> tuple[str, ...]:
        """``host:port`` of every node, for ``[database] hosts``."""
        return tuple(f"{n.host}:{n.port}" for n in self.nodes)

    def wait_size(self, size: int, timeout: float = START_TIMEOUT) -> None:
        """Until every running node is Synced in a Primary component of ``size`` nodes."""
        deadline = time.monotonic() + timeout
        while True:
            sizes = []
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    with node.admin(connect_timeout=1, read_timeout=2) as c, c.cursor() as cur:
                        cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'")
                        row = cur.fetchone()
                    sizes.append(int(row[1]) if row and node._accepts() else -1)
                except pymysql.err.MySQLError:
                    sizes.append(-1)
            if sizes and all(s == size for s in sizes):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"cluster not at {size} synced nodes: {sizes}")
            time.sleep(_POLL_INTERVAL)

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    def rebootstrap(self) -> GaleraNode:
        """After every node died: bootstrap from the most advanced one (recovered seqno, as
        an operator would), mark it safe_to_bootstrap, then let the others rejoin."""
        if any(n.running for n in self.nodes):
            raise TestbedError("rebootstrap needs every node stopped")
        seqnos = [n.recovered_seqno() for n in self.nodes]
        seed = self.nodes[seqnos.index(max(seqnos))]
        seed.mark_safe_to_bootstrap()
        seed.new_cluster = True
        seed.start()
        for node in self.nodes:
            node.start()
        return seed

    def close(self) -> None:
        """Stop every node (SIGCONT first: a frozen one cannot shut down)."""
        for node in reversed(self.nodes):
            if node.running:
                with contextlib.suppress(ProcessLookupError, TestbedError):
                    node.sigcont()
                node.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket (tests, demo, benchmarks):
    the daemon's READY/STATUS/WATCHDOG messages are how they know what it did, without sleeps.

    A thread reads the socket all the time, as systemd does: the kernel queues only a few
    datagrams (``net.unix.max_dgram_qlen``, 10 here), and a daemon whose notify socket is full
    blocks in sd_notify, its event loop with it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []
        self.last_status = ""
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read_all, name="notify", daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:  # closed
                return
            if not data:  # shut down (sd_notify never sends an empty message)
                return
            self._queue.put(data)

    def _record(self, data: bytes) -> dict[str, str]:
        lines = data.decode("utf-8", "replace").splitlines()
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        self.messages.append(fields)
        self.last_status = fields.get("STATUS", self.last_status)
        return fields

    def read(self, timeout: float) -> dict[str, str] | None:
        """The next message, or None after ``timeout`` seconds."""
        try:
            return self._record(self._queue.get(timeout=timeout))
        except queue.Empty:
            return None

    def wait(
        self,
        pred: Callable[[dict[str, str]], bool],
        timeout: float = 60,
        alive: Callable[[], bool] = lambda: True,
    ) -> dict[str, str]:
        """The next message for which ``pred`` holds (bounded; fails early if the sender died)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.read(min(left, 1.0))
            if msg is not None and pred(msg):
                return msg
            if msg is None and not alive():
                raise TestbedError(f"the daemon exited; messages: {self.messages[-8:]}")
        raise TestbedError(f"no such notify message within {timeout} s; got {self.messages[-8:]}")

    def wait_status(
        self, text: str, timeout: float = 60, alive: Callable[[], bool] = lambda: True
    ) -> str:
        return self.wait(lambda m: text in m.get("STATUS", ""), timeout, alive)["STATUS"]

    def drain(self) -> None:
        """Take what has arrived (after the sender has exited nothing more will come)."""
        while True:
            try:
                self._record(self._queue.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        # shutdown() ends the reader's blocking recv; close() alone may not
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)
