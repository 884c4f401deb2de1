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


def test_fingerprint_sql_covers_watched_columns() -> None:
    text = db.fingerprint_sql("modem")
    for col in ("id", "hostname", "mac", "public", "internet_access", "deleted_at"):
        assert f"`{col}`" in text
    assert "updated_at" not in text and "us_pwr" not in text
    assert rows.small().modem  # the seed used above has modems
