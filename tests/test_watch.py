"""Change detection against a real MariaDB: nothing missed, nothing needless."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from provhad import config, db
from provhad.testbed import MariaDB, ScratchDatabase
from tests import rows
from tests.test_cli_render import seed_small


def db_config(d: ScratchDatabase) -> config.DatabaseConfig:
    return config.DatabaseConfig(
        hosts=(f"{d.host}:{d.port}",), user=d.ro_user, password=d.ro_password, name=d.name
    )


@pytest.fixture(scope="module")
def binlog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    with MariaDB(tmp_path_factory.mktemp("binlog"), binlog=True) as server:
        yield server


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory, binlog_server: MariaDB) -> Iterator[MariaDB]:
    """An async replica of ``binlog_server`` with a binlog of its own (gtid domain 2) that has
    seen one local write, and MariaDB's default log_slave_updates=OFF."""
    server = MariaDB(
        tmp_path_factory.mktemp("replica"),
        binlog=True,
        server_id=2,
        extra_args=("--gtid-domain-id=2",),
    )
    with server:
        with server.admin() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE replica_local")
        server.replicate_from(binlog_server)
        yield server


@pytest.fixture(params=["plain", "binlog"])
async def watched(
    request: pytest.FixtureRequest,
    nmsdb: ScratchDatabase,
    binlog_server: MariaDB,
    schema_sql: Path,
) -> AsyncIterator[tuple[ScratchDatabase, db.Watcher]]:
    if request.param == "plain":
        seed_small(nmsdb)
        watcher = db.Watcher(db_config(nmsdb))
        yield nmsdb, watcher
        watcher.close()
        return
    with binlog_server.scratch(schema_sql, prefix="watch") as scratch:
        seed_small(scratch)
        watcher = db.Watcher(db_config(scratch))
        yield scratch, watcher
        watcher.close()


def sql(d: ScratchDatabase, statement: str) -> None:
    with d.admin.cursor() as cur:
        cur.execute(statement)


async def test_first_call_reports_everything(watched: tuple[ScratchDatabase, db.Watcher]) -> None:
    _d, w = watched
    assert sorted(await w.changed()) == sorted(db.WATCHED)
    assert await w.changed() == []


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        (
            "INSERT INTO modem (id, hostname, mac)"
            " VALUES (100077, 'cm-100077', '00:11:22:33:44:77')",
            "modem",
        ),
        # same second, and no updated_at bump at all
        ("UPDATE modem SET mac = '00:11:22:33:44:99' WHERE id = 100001", "modem"),
        ("UPDATE modem SET deleted_at = NOW() WHERE id = 100001", "modem"),
        ("DELETE FROM mta WHERE id = 300000", "mta"),
        ("UPDATE ippool SET optional = 'default-lease-time 60;' WHERE id = 2", "ippool"),
        ("UPDATE provha SET slave_config_rebuild_interval = 600", "provha"),
        ("UPDATE netgw SET hostname = 'cmts-renamed' WHERE id = 1", "netgw"),
        ("UPDATE endpoint SET ip = '198.18.0.16' WHERE id = 200000", "endpoint"),
        ("UPDATE provbase SET domain_name = 'example.net'", "provbase"),
        ("UPDATE provvoip SET mta_domain = NULL", "provvoip"),
    ],
)
async def test_every_kind_of_change_is_seen(
    watched: tuple[ScratchDatabase, db.Watcher], statement: str, table: str
) -> None:
    d, w = watched
    await w.changed()
    sql(d, statement)
    assert await w.changed() == [table]
    assert await w.changed() == []


async def test_two_updates_in_one_second_are_both_seen(
    watched: tuple[ScratchDatabase, db.Watcher],
) -> None:
    d, w = watched
    sql(d, "UPDATE modem SET public = 1, updated_at = '2021-01-01 00:00:00' WHERE id = 100001")
    await w.changed()
    sql(d, "UPDATE modem SET public = 0, updated_at = '2021-01-01 00:00:00' WHERE id = 100001")
    assert await w.changed() == ["modem"]


async def test_unwatched_columns_cause_no_rebuild(
    watched: tuple[ScratchDatabase, db.Watcher],
) -> None:
    d, w = watched
    await w.changed()
    sql(d, "UPDATE modem SET us_pwr = 42, ds_snr = 35, updated_at = NOW() WHERE id = 100000")
    sql(d, "UPDATE netgw SET state = 2 WHERE id = 1")
    assert await w.changed() == []


async def test_database_loss_is_reported_and_recovered(
    mariadb: MariaDB, nmsdb: ScratchDatabase
) -> None:
    seed_small(nmsdb)
    w = db.Watcher(db_config(nmsdb))
    await w.changed()
    mariadb.stop()
    try:
        # the open connection is lost, and the one node refuses a new one
        node = re.escape(f"{nmsdb.host}:{nmsdb.port}")
        for _ in range(2):
            with pytest.raises(
                db.DatabaseError, match=f"^no healthy database node: {node}: error 2003"
            ):
                await w.changed()
        assert [str(n) for n in w.cluster.failures] == [f"{nmsdb.host}:{nmsdb.port}"]
    finally:
        mariadb.start()
    nmsdb.admin.connect()  # the old connection died with the server
    sql(nmsdb, "DELETE FROM modem WHERE id = 100002")
    # the failed node is still tried when it is the only one, and recovers by answering
    assert await w.changed() == ["modem"]
    assert not w.cluster.failures
    w.close()


async def test_change_on_the_primary_is_seen_on_an_async_replica(
    binlog_server: MariaDB, replica: MariaDB, schema_sql: Path
) -> None:
    with binlog_server.scratch(schema_sql, prefix="repl") as d:
        seed_small(d)
        replica.wait_replicated(binlog_server)
        cfg = config.DatabaseConfig(
            hosts=(f"{replica.host}:{replica.port}",),
            user=d.ro_user,
            password=d.ro_password,
            name=d.name,
        )
        w = db.Watcher(cfg)
        try:
            assert sorted(await w.changed()) == sorted(db.WATCHED)
            before = w.position
            # the replica's own binlog, which replication does not move
            assert before is not None and before.startswith("gtid:2-2-1/"), before
            sql(d, "UPDATE modem SET mac = '00:11:22:33:44:98' WHERE id = 100001")
            replica.wait_replicated(binlog_server)
            assert await w.changed() == ["modem"]
            after = w.position
            assert after != before and after is not None and after.startswith("gtid:2-2-1/")
            assert await w.changed() == []
        finally:
            w.close()


def test_fingerprint_sql_covers_watched_columns() -> None:
    text = db.fingerprint_sql("modem")
    for col in ("id", "hostname", "mac", "public", "internet_access", "deleted_at"):
        assert f"`{col}`" in text
    assert "updated_at" not in text and "us_pwr" not in text
    assert rows.small().modem  # the seed used above has modems
