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
