"""The throwaway servers behave as the other tests rely on."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import aiomysql
import pymysql
import pytest
from pymysql.constants import ER

from provhad import testbed
from provhad.testbed import MariaDB, Mosquitto, ScratchDatabase, TestbedError

ACCESS_DENIED = {ER.TABLEACCESS_DENIED_ERROR, ER.DBACCESS_DENIED_ERROR}


def query(conn: pymysql.Connection, sql: str) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def ro_connect(db: ScratchDatabase, over: str) -> pymysql.Connection:
    """Log in as the read-only user over TCP (host 127.0.0.1) or the socket (host localhost)."""
    where = {"host": db.host, "port": db.port} if over == "tcp" else {"unix_socket": str(db.socket)}
    return pymysql.connect(**where, user=db.ro_user, password=db.ro_password, database=db.name)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port that stays bound (and listening) for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_root_logs_in_over_socket_and_tcp(mariadb: MariaDB) -> None:
    with mariadb.admin() as conn:
        assert "MariaDB" in str(query(conn, "SELECT VERSION()")[0][0])
    with pymysql.connect(host=mariadb.host, port=mariadb.port, user="root") as conn:
        assert query(conn, "SELECT 1") == [(1,)]


def test_schema_is_loaded_completely(nmsdb: ScratchDatabase, schema_sql: Path) -> None:
    expected = set(re.findall(r"^CREATE TABLE (\w+)", schema_sql.read_text(), re.MULTILINE))
    assert expected
    assert {row[0] for row in query(nmsdb.admin, "SHOW TABLES")} == expected
    # Table options after the last comment-bearing column survived the server-side split.
    query(nmsdb.admin, "INSERT INTO modem (mac) VALUES ('00:11:22:33:44:55')")
    assert query(nmsdb.admin, "SELECT id FROM modem") == [(100000,)]


@pytest.mark.parametrize("over", ["tcp", "socket"])
def test_readonly_user_can_select(nmsdb: ScratchDatabase, over: str) -> None:
    query(nmsdb.admin, "INSERT INTO netgw (hostname) VALUES ('cmts-1')")
    with ro_connect(nmsdb, over) as conn:
        assert query(conn, "SELECT hostname FROM netgw") == [("cmts-1",)]
        # It sees nothing but its own database.
        assert {r[0] for r in query(conn, "SHOW DATABASES")} == {"information_schema", nmsdb.name}


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO modem (mac) VALUES ('00:11:22:33:44:55')",
        "UPDATE provbase SET domain_name = 'x'",
        "DELETE FROM ippool",
        "CREATE TABLE sneaky (id int)",
        "DROP TABLE modem",
        "CREATE DATABASE sneaky",
    ],
)
@pytest.mark.parametrize("over", ["tcp", "socket"])
def test_readonly_user_cannot_write(nmsdb: ScratchDatabase, over: str, sql: str) -> None:
    with ro_connect(nmsdb, over) as conn:
        with pytest.raises(pymysql.err.OperationalError) as denied:
            query(conn, sql)
        assert denied.value.args[0] in ACCESS_DENIED


async def test_readonly_kwargs_work_with_aiomysql(nmsdb: ScratchDatabase) -> None:
    conn = await aiomysql.connect(**nmsdb.ro_connect_kwargs())
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM modem")
            assert await cur.fetchone() == (0,)
    finally:
        conn.close()


def test_scratch_databases_are_unique_and_dropped(mariadb: MariaDB, schema_sql: Path) -> None:
    with mariadb.scratch(schema_sql) as one, mariadb.scratch(schema_sql) as two:
        assert one.name != two.name
        assert one.ro_user != two.ro_user
    with mariadb.admin() as conn:
        databases = {r[0] for r in query(conn, "SHOW DATABASES")}
        users = {r[0] for r in query(conn, "SELECT user FROM mysql.user")}
    assert not {one.name, two.name} & databases
    assert not {one.ro_user, two.ro_user} & users


def test_restart_keeps_port_and_data(tmp_path: Path, schema_sql: Path) -> None:
    server = MariaDB(tmp_path)
    with server:
        server.create_database("kept", schema_sql)
        port = server.port
        server.stop(graceful=False)  # a crash: InnoDB recovers on the next start
        assert not server.running
        server.start()
        assert server.port == port
        with server.admin("kept") as conn:
            assert query(conn, "SELECT COUNT(*) FROM modem") == [(0,)]
    assert not server.running


@pytest.mark.parametrize("server_class", [MariaDB, Mosquitto])
def test_start_retries_when_the_free_port_was_taken(
    tmp_path: Path,
    busy_port: int,
    monkeypatch: pytest.MonkeyPatch,
    server_class: type[MariaDB | Mosquitto],
) -> None:
    ports = iter([busy_port, testbed.free_port()])
    monkeypatch.setattr(testbed, "free_port", lambda: next(ports))
    with server_class(tmp_path) as server:
        assert server.port != busy_port
        assert server.running


@pytest.mark.parametrize("server_class", [MariaDB, Mosquitto])
def test_start_failure_shows_the_log(
    tmp_path: Path, busy_port: int, server_class: type[MariaDB | Mosquitto]
) -> None:
    server = server_class(tmp_path, port=busy_port)  # an explicit port is never replaced
    with pytest.raises(TestbedError, match="Address already in use"):
        server.start()
    assert not server.running


def test_socket_path_length_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="too long"):
        MariaDB(tmp_path / ("x" * 120))


async def test_mosquitto_round_trip(mosquitto: Mosquitto) -> None:
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port) as sub,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as pub,
    ):
        await sub.subscribe("provhad/test", qos=1)  # returns after the SUBACK
        await pub.publish("provhad/test", b"hello", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(sub.messages))
    assert message.payload == b"hello"


async def test_mosquitto_restarts_on_the_same_port(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    with broker:
        port = broker.port
        broker.stop()
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, port):
                pass
        broker.start()
        assert broker.port == port
        async with aiomqtt.Client(broker.host, port):
            pass
