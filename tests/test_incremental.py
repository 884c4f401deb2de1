"""Incremental snapshots against a real MariaDB: only touched chunks are re-read, and the
result always equals a full read, whatever kind of change landed."""

from __future__ import annotations

import datetime

import pytest

from provhad import db, model
from provhad.snapshot import (
    ENDPOINT_COLUMNS,
    MODEM_COLUMNS,
    MTA_COLUMNS,
    PackedRows,
    Packer,
    Snapshot,
    Table,
)
from provhad.testbed import ScratchDatabase
from tests import rows
from tests.test_cli_render import insert, seed_small
from tests.test_watch import db_config, sql

CHUNK = db.CHUNK_IDS
#: Modems in chunks of their own, apart from seed_small's (ids 100000..): 3 * CHUNK.., 9 * CHUNK..
FAR = (3 * CHUNK, 3 * CHUNK + 1, 3 * CHUNK + 2, 9 * CHUNK, 9 * CHUNK + 7)


def _mac(n: int) -> str:
    return f"02:00:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"


#: the modelled chunks, kept across the reads of a test as the daemon keeps them
PARTS = model.PartCache()


def _same(inc: Snapshot, full: Snapshot) -> None:
    for table in db.BIG:
        a, b = getattr(inc, table), getattr(full, table)
        assert isinstance(a, Table) and isinstance(b, Table)
        assert a.columns == b.columns, table
        assert list(a.rows) == list(b.rows), table
    whole = model.build(full, "slave")
    assert model.build(inc, "slave") == whole
    # modelled chunk by chunk, unchanged chunks taken from the last build: the same model
    assert model.build(inc, "slave", parts=PARTS) == whole


@pytest.fixture
def seeded(nmsdb: ScratchDatabase) -> ScratchDatabase:
    seed_small(nmsdb)
    for mid in FAR:
        insert(nmsdb, "modem", rows.modem(mid, _mac(mid)))
    insert(nmsdb, "mta", {"id": 3 * CHUNK, "modem_id": FAR[0], "mac": _mac(FAR[0] + 1)})
    insert(
        nmsdb,
        "endpoint",
        {"id": 9 * CHUNK, "modem_id": FAR[3], "hostname": "cpe-far", "mac": None, "version": "4"},
    )
    return nmsdb


# (statement, {table: chunks expected to be re-read})
CHANGES: list[tuple[str, dict[str, int]]] = [
    (f"UPDATE modem SET hostname = 'cm-renamed' WHERE id = {FAR[1]}", {"modem": 1}),
    # a no-op UPDATE: nothing to re-read
    (f"UPDATE modem SET hostname = 'cm-renamed' WHERE id = {FAR[1]}", {"modem": 0}),
    # the endpoint has no MAC of its own: its row carries its modem's MAC (the join)
    (f"UPDATE modem SET mac = '{_mac(7)}' WHERE id = {FAR[3]}", {"modem": 1, "endpoint": 1}),
    (f"UPDATE modem SET hostname = NULL WHERE id = {FAR[2]}", {"modem": 1}),
    (f"UPDATE modem SET hostname = 'NULL' WHERE id = {FAR[2]}", {"modem": 1}),
    # two rows of one chunk swap their values: the XOR still moves (the id is in each row)
    (
        f"UPDATE modem SET hostname = IF(id = {FAR[0]}, 'cm-renamed', 'cm-{FAR[0]}')"
        f" WHERE id IN ({FAR[0]}, {FAR[1]})",
        {"modem": 1},
    ),
    (f"UPDATE modem SET deleted_at = NOW() WHERE id = {FAR[4]}", {"modem": 1}),
    (f"UPDATE mta SET mac = NULL WHERE id = {3 * CHUNK}", {"mta": 1, "modem": 0}),
    # the whole far chunk goes: nothing to re-read, one chunk fewer
    (f"DELETE FROM endpoint WHERE modem_id BETWEEN {9 * CHUNK} AND {10 * CHUNK}", {"endpoint": 0}),
    (f"DELETE FROM modem WHERE id BETWEEN {9 * CHUNK} AND {10 * CHUNK}", {"modem": 0}),
    # a brand-new chunk
    (
        f"INSERT INTO modem (id, hostname, mac) VALUES ({20 * CHUNK}, 'cm-new', '{_mac(20)}')",
        {"modem": 1},
    ),
    ("UPDATE modem SET public = 1 WHERE id = 100001", {"modem": 1}),
]


async def test_incremental_reads_equal_full_reads(seeded: ScratchDatabase) -> None:
    cfg = db_config(seeded)
    cache = db.RowCache()
    first = await db.read_snapshot(cfg, cache, full=True)
    _same(first, await db.read_snapshot(cfg))
    assert cache.last_read["modem"] == (3, 3)  # a full read: every chunk
    # db.BIG selects the columns in the order the model reads them (its fast path)
    for table, columns in (
        ("modem", MODEM_COLUMNS),
        ("mta", MTA_COLUMNS),
        ("endpoint", ENDPOINT_COLUMNS),
    ):
        read = getattr(first, table)
        assert isinstance(read, Table) and read.columns == columns, table
    for statement, expect in CHANGES:
        before = {t: total for t, (_, total) in cache.last_read.items()}
        sql(seeded, statement)
        inc = await db.read_snapshot(cfg, cache, full=False)
        _same(inc, await db.read_snapshot(cfg))
        for table, chunks in expect.items():
            assert cache.last_read[table][0] == chunks, (statement, cache.last_read)
        for table in set(db.BIG) - set(expect):
            assert cache.last_read[table][0] == 0, (statement, cache.last_read)
        if statement.startswith("DELETE FROM modem"):
            assert cache.last_read["modem"][1] == before["modem"] - 1


async def test_a_failed_read_leaves_the_cache_as_it_was(seeded: ScratchDatabase) -> None:
    cfg = db_config(seeded)
    cache = db.RowCache()
    await db.read_snapshot(cfg, cache, full=True)
    chunks = {t: dict(c) for t, c in cache.chunks.items()}
    sql(seeded, f"UPDATE modem SET hostname = 'cm-x' WHERE id = {FAR[0]}")
    sql(seeded, f"REVOKE SELECT ON `{seeded.name}`.* FROM '{seeded.ro_user}'@'127.0.0.1'")
    sql(seeded, f"GRANT SELECT ON `{seeded.name}`.`modem` TO '{seeded.ro_user}'@'127.0.0.1'")
    with pytest.raises(db.DatabaseError):
        await db.read_snapshot(cfg, cache, full=False)  # modem readable, endpoint not
    assert cache.chunks == chunks
    sql(seeded, f"GRANT SELECT ON `{seeded.name}`.* TO '{seeded.ro_user}'@'127.0.0.1'")
    inc = await db.read_snapshot(cfg, cache, full=False)
    _same(inc, await db.read_snapshot(cfg))
    assert cache.last_read["modem"][0] == 1


async def test_without_provvoip_the_mta_table_may_be_missing(seeded: ScratchDatabase) -> None:
    cfg = db_config(seeded)
    cache = db.RowCache()
    await db.read_snapshot(cfg, cache, full=True)
    sql(seeded, "DROP TABLE mta")
    snap = await db.read_snapshot(cfg, cache, full=False)
    assert list(snap.mta) == [] and "mta" not in cache.chunks
    full = await db.read_snapshot(cfg)
    assert isinstance(snap.modem, Table) and isinstance(full.modem, Table)
    assert list(snap.modem.rows) == list(full.modem.rows)


def test_packed_rows_unpack_to_the_same_rows() -> None:
    rows = [(i, f"cm-{i}", None if i % 7 else "02:00:00:00:00:01") for i in range(10_000)]
    packed = PackedRows.pack(rows, per_blob=4096)
    assert isinstance(packed, PackedRows) and len(packed.blobs) == 3
    assert len(packed) == len(rows) and list(packed) == rows
    assert packed[4097] == rows[4097] and packed[-1] == rows[-1] and packed[3:6] == rows[3:6]
    table = Table(("id", "hostname", "mac"), packed)
    assert table[7] == {"id": 7, "hostname": "cm-7", "mac": "02:00:00:00:00:01"}
    # the model's packed rows: made into its NamedTuples as they are iterated
    packer: Packer[model.Mta] = Packer(model.Mta._make, per_blob=3)
    for i in range(7):
        packer.append((i, f"02:00:00:00:00:{i:02x}"))
    mtas = packer.done()
    assert len(mtas) == 7 and len(mtas.blobs) == 3
    assert list(mtas) == [model.Mta(i, f"02:00:00:00:00:{i:02x}") for i in range(7)]
    assert mtas[6].mac == "02:00:00:00:00:06" and mtas == list(mtas) and mtas != list(mtas)[:6]
    # a type marshal does not take: kept as it is rather than failing the read
    odd = [(1, datetime.date(2026, 11, 25))]
    assert PackedRows.pack(odd) is odd
