"""Change detection against a real MariaDB: nothing missed, nothing needless."""

from __future__ import annotations

import re
import zlib
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


# --- each rule of the fingerprint, with a change only that rule notices ----------------------


def prints(d: ScratchDatabase, table: str = "modem") -> tuple[int, ...]:
    """(COUNT, MAX(id), SUM, BIT_XOR) as the watcher reads them."""
    with d.admin.cursor() as cur:
        cur.execute(db.fingerprint_sql(table))
        row = cur.fetchone()
    return tuple(int(v) for v in row)[:4]  # the hook's sums follow


def row_crc(d: ScratchDatabase, mid: int) -> int:
    with d.admin.cursor() as cur:
        cur.execute(f"SELECT {db.row_crc_sql('modem')} FROM modem WHERE id = %s", (mid,))
        row = cur.fetchone()
    return int(row[0])


#: Characters '0'..'?' (0x30-0x3F): their low nibble is free, so they span an affine space.
_FREE = 10


def forge(mid: int, target: int) -> str:
    """A hostname 'cm-' + _FREE characters for which the modem row (mid, hostname, mac
    '02:00:00:00:00:01', public 0, internet_access 1, not deleted) has CRC32 ``target``.

    CRC32 over messages of one length is affine, so the effect of each free bit is a fixed
    XOR mask on the CRC: solving for ``target`` is Gaussian elimination over GF(2)."""

    def crc(chars: list[int]) -> int:
        host = "cm-" + "".join(chr(0x30 | n) for n in chars)
        return zlib.crc32(f"{mid}|{host}|02:00:00:00:00:01|0|1|\0".encode())

    base = [0] * _FREE
    c0 = crc(base)
    pivots: dict[int, tuple[int, int]] = {}  # CRC bit -> (mask, free bits that give it)
    for i in range(4 * _FREE):
        bits = [0] * _FREE
        bits[i // 4] = 1 << (i % 4)
        mask, combo = crc(bits) ^ c0, 1 << i
        while mask:
            top = mask.bit_length() - 1
            if top not in pivots:
                pivots[top] = (mask, combo)
                break
            mask, combo = mask ^ pivots[top][0], combo ^ pivots[top][1]
    want, combo = c0 ^ target, 0
    while want:
        mask, bits_ = pivots[want.bit_length() - 1]
        want, combo = want ^ mask, combo ^ bits_
    chars = [(combo >> (4 * k)) & 15 for k in range(_FREE)]
    assert crc(chars) == target
    return "cm-" + "".join(chr(0x30 | n) for n in chars)


def put_modem(d: ScratchDatabase, mid: int, hostname: str) -> None:
    sql(
        d,
        "REPLACE INTO modem (id, hostname, mac, public, internet_access)"
        f" VALUES ({mid}, '{hostname}', '02:00:00:00:00:01', 0, 1)",
    )


@pytest.fixture
async def plain(nmsdb: ScratchDatabase) -> AsyncIterator[tuple[ScratchDatabase, db.Watcher]]:
    seed_small(nmsdb)
    w = db.Watcher(db_config(nmsdb))
    await w.changed()
    yield nmsdb, w
    w.close()


async def test_a_value_moved_to_a_null_neighbour_is_seen(
    plain: tuple[ScratchDatabase, db.Watcher],
) -> None:
    d, w = plain
    sql(d, "UPDATE ippool SET dns1_ip = '10.0.0.53', dns2_ip = NULL WHERE id = 1")
    await w.changed()
    sql(d, "UPDATE ippool SET dns1_ip = NULL, dns2_ip = '10.0.0.53' WHERE id = 1")
    assert await w.changed() == ["ippool"]


async def test_text_moved_across_a_column_boundary_is_seen(
    plain: tuple[ScratchDatabase, db.Watcher],
) -> None:
    d, w = plain
    sql(d, "UPDATE modem SET hostname = 'cm-a1', mac = 'b' WHERE id = 100001")
    await w.changed()
    sql(d, "UPDATE modem SET hostname = 'cm-a', mac = '1b' WHERE id = 100001")
    assert await w.changed() == ["modem"]


async def test_rows_that_swap_their_content_are_seen(
    plain: tuple[ScratchDatabase, db.Watcher],
) -> None:
    d, w = plain
    sql(
        d,
        "UPDATE modem m1 JOIN modem m2 ON m1.id = 100000 AND m2.id = 100001"
        " SET m1.hostname = m2.hostname, m2.hostname = m1.hostname,"
        " m1.mac = m2.mac, m2.mac = m1.mac",
    )
    assert await w.changed() == ["modem"]


@pytest.mark.parametrize("kept", ["sum", "xor"])
async def test_a_change_that_keeps_one_crc_sum_is_seen(
    plain: tuple[ScratchDatabase, db.Watcher], kept: str
) -> None:
    """Two rows rewritten so that their CRCs keep the XOR (then only SUM sees it) or the
    arithmetic sum (then only BIT_XOR sees it)."""
    d, w = plain
    a, b = 100000, 100001
    put_modem(d, a, forge(a, 0x1234))
    put_modem(d, b, forge(b, 0x5678))
    await w.changed()
    before = prints(d)
    ca, cb = row_crc(d, a), row_crc(d, b)
    assert (ca, cb) == (0x1234, 0x5678)  # forge() spells rows as the database does
    if kept == "xor":
        na, nb = ca ^ 0x100, cb ^ 0x100  # a sum of 0x1334 + 0x5778: moved by +0x200
    else:
        na, nb = ca + 1, cb - 1  # an XOR of 0x1235 ^ 0x5677: moved
    put_modem(d, a, forge(a, na))
    put_modem(d, b, forge(b, nb))
    after = prints(d)
    assert after[:2] == before[:2]
    assert (after[2] == before[2]) == (kept == "sum") and (after[3] == before[3]) == (kept == "xor")
    assert await w.changed() == ["modem"]


async def test_a_row_with_a_zero_crc_is_seen(plain: tuple[ScratchDatabase, db.Watcher]) -> None:
    """Inserted below the highest id: only COUNT moves."""
    d, w = plain
    before = prints(d)
    put_modem(d, 99999, forge(99999, 0))
    assert prints(d)[1:] == before[1:] and prints(d)[0] == before[0] + 1
    assert await w.changed() == ["modem"]


async def test_a_row_replaced_by_a_higher_id_with_its_crc_is_seen(
    plain: tuple[ScratchDatabase, db.Watcher],
) -> None:
    """Only MAX(id) moves."""
    d, w = plain
    before = prints(d)
    old = 100000
    crc = row_crc(d, old)
    new = before[1] + 1
    sql(d, f"DELETE FROM modem WHERE id = {old}")
    put_modem(d, new, forge(new, crc))
    after = prints(d)
    assert after[1] == new and (after[0], *after[2:]) == (before[0], *before[2:])
    assert await w.changed() == ["modem"]


async def test_configfile_inputs_are_watched_apart(
    plain: tuple[ScratchDatabase, db.Watcher],
) -> None:
    """A configfile input (configfile_id, the configfile's text) is reported to the hook only;
    a generation input that the hook reads too to both; cacti's columns to neither."""
    d, w = plain
    sql(d, "INSERT INTO configfile (id, name, text, device) VALUES (7, 'cm', 'x', 'cm')")
    assert (await w.changed(), w.hook_changes) == ([], ["configfile"])
    sql(d, "UPDATE configfile SET text = 'NetworkAccess 1;' WHERE id = 7")
    assert (await w.changed(), w.hook_changes) == ([], ["configfile"])
    sql(d, "UPDATE modem SET configfile_id = 7 WHERE id = 100000")
    assert (await w.changed(), w.hook_changes) == ([], ["modem"])
    sql(d, "UPDATE modem SET us_pwr = 42 WHERE id = 100000")
    assert (await w.changed(), w.hook_changes) == ([], [])
    sql(d, "UPDATE modem SET hostname = 'cm-renamed' WHERE id = 100000")
    assert (await w.changed(), w.hook_changes) == (["modem"], ["modem"])
    sql(d, "UPDATE mta SET configfile_id = 7")
    assert (await w.changed(), w.hook_changes) == ([], ["mta"])
