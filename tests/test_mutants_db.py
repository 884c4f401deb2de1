"""Tests that kill mutants of provhad/db.py which the other tests let live."""

from __future__ import annotations

import pymysql
import pytest

from provhad import db
from provhad.config import DatabaseConfig

GALERA_OK = {
    "wsrep_on": "on",  # as SHOW GLOBAL VARIABLES may spell it
    "wsrep_ready": "ON",
    "wsrep_cluster_status": "Primary",
    "wsrep_local_state_comment": "Donor/Desynced",
}


def test_a_galera_node_is_judged_whatever_the_case_of_wsrep_on() -> None:
    assert db.unfit(GALERA_OK) == "not Synced (Donor/Desynced)"


def test_a_node_that_answers_again_is_healthy() -> None:
    c = db.Cluster(DatabaseConfig(hosts=("db1", "db2")), clock=lambda: 0.0)
    first = c.nodes[0]
    c.failed(first, "down")
    c.healthy(first)
    assert c.preferred == first and c.failures == {}


def test_mysql_errors_are_described_with_their_code() -> None:
    assert db._describe(pymysql.err.OperationalError(2003, "Can't connect")) == (
        "error 2003: Can't connect"
    )
    assert db._describe(TimeoutError()) == "TimeoutError"


def test_query_deadline_has_a_floor() -> None:
    assert db.query_timeout(DatabaseConfig(connect_timeout=1)) == db.MIN_QUERY_TIMEOUT
    assert db.query_timeout(DatabaseConfig(connect_timeout=5)) == 15


@pytest.mark.parametrize("table", sorted(db.WATCHED))
def test_the_row_fingerprint_covers_soft_deletes_and_nulls(table: str) -> None:
    sql = db.row_crc_sql(table)
    for column in ("id", *db.WATCHED[table], "deleted_at"):
        assert f"IFNULL(`{column}`, '\\0')" in sql


def test_rows_are_grouped_by_chunk_of_ids() -> None:
    rows = [(1, "a"), (db.CHUNK_IDS - 1, "b"), (db.CHUNK_IDS, "c"), (5 * db.CHUNK_IDS + 3, "d")]
    assert db._group(rows) == {0: rows[:2], 1: [rows[2]], 5: [rows[3]]}


# --- the configfile hook's inputs ------------------------------------------------------------


def test_hook_inputs_get_their_own_sums_in_the_same_scan() -> None:
    both, hook_only = db.fingerprint_sql("modem"), db.fingerprint_sql("configfile")
    assert both.count("CRC32(") == 4 and hook_only.count("CRC32(") == 2
    assert both.count("`configfile_id`") == 2  # in the hook's two sums, not the table's
    assert "`text`" in hook_only
    assert db.fingerprint_sql("mta").count("`configfile_id`") == 2


def test_a_fingerprint_row_splits_into_the_table_and_the_hook() -> None:
    assert db._split("modem", (3, 9, 11, 12, 21, 22)) == {
        "modem": (3, 9, 11, 12),
        "configfile:modem": (3, 9, 21, 22),
    }
    assert db._split("configfile", (1, 7, 5, 6)) == {"configfile:configfile": (1, 7, 5, 6)}
    assert db._split("netgw", (2, 4, 5, 6)) == {"netgw": (2, 4, 5, 6)}


async def test_nothing_committed_means_no_hook_change_either(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The position did not move: no fingerprint is read, and the hook changes of the call
    before are not reported again."""
    w = db.Watcher(DatabaseConfig(hosts=("db1",)))
    status = {"gtid_binlog_pos": "0-1-5"}

    async def same_node() -> dict[str, str]:
        return status

    monkeypatch.setattr(w, "_status", same_node)
    w.position, w.prints, w.hook_changes = db.position(status), {"modem": (1, 1, 1, 1)}, ["mta"]
    assert await w.changed() == [] and w.hook_changes == []
