"""Node selection (db.Cluster) and the rules that judge a node (db.unfit, db.position): pure
logic with a fake clock and status rows as the server reports them, then the wiring against a
real MariaDB reached two ways (its unix socket and its TCP port are two "nodes")."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from provhad import config, db
from provhad.testbed import ScratchDatabase
from tests.test_cli_render import seed_small


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def three() -> tuple[db.Cluster, Clock, list[db.Node]]:
    clock = Clock()
    cfg = config.DatabaseConfig(hosts=("10.0.0.1", "10.0.0.2:3307", "10.0.0.3"))
    c = db.Cluster(cfg, clock=clock)
    return c, clock, c.nodes


def test_nodes_in_configured_order_socket_first() -> None:
    cfg = config.DatabaseConfig(hosts=("a", "b:3307"), socket="/run/mysqld.sock")
    assert [str(n) for n in db.nodes(cfg)] == ["/run/mysqld.sock", "a:3306", "b:3307"]


def test_the_first_configured_node_is_preferred() -> None:
    c, _, (n1, n2, n3) = three()
    assert c.order() == [n1, n2, n3] and c.preferred == n1
    assert c.due() == [] and c.problems() == ""


def test_a_failed_node_is_tried_last_until_healthy_again() -> None:
    c, _, (n1, n2, n3) = three()
    c.failed(n1, "no answer within 2 s")
    assert c.order() == [n2, n3, n1] and c.preferred == n2
    c.failed(n2, "error 2003")
    # the failed ones stay in configured order behind the healthy one
    assert c.order() == [n3, n1, n2]
    assert c.problems() == "10.0.0.1:3306: no answer within 2 s; 10.0.0.2:3307: error 2003"
    c.healthy(n1)
    assert c.order() == [n1, n3, n2] and c.preferred == n1
    c.healthy(n2)
    assert c.order() == [n1, n2, n3]


def test_every_node_failed_all_are_still_tried() -> None:
    c, _, nodes = three()
    for n in reversed(nodes):
        c.failed(n, "down")
    assert c.order() == nodes


def test_a_failed_node_is_probed_after_the_interval() -> None:
    c, clock, (n1, n2, _) = three()
    c.failed(n1, "down")
    clock.now += db.PROBE_INTERVAL - 0.01
    c.failed(n2, "down")
    assert c.due() == []
    clock.now += 0.01
    assert c.due() == [n1]
    c.failed(n1, "still down")  # a failed probe: the next one is an interval later
    assert c.due() == []
    clock.now += db.PROBE_INTERVAL
    assert c.due() == [n1, n2]


# --- health ------------------------------------------------------------------------------

GALERA_OK = {
    "wsrep_on": "ON",
    "wsrep_ready": "ON",
    "wsrep_cluster_status": "Primary",
    "wsrep_local_state_comment": "Synced",
    "wsrep_last_committed": "42",
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"wsrep_cluster_status": "non-Primary"}, "not in the Primary component (non-Primary)"),
        # the partition says more than "not ready", so it comes first
        (
            {"wsrep_cluster_status": "non-Primary", "wsrep_ready": "OFF"},
            "not in the Primary component (non-Primary)",
        ),
        ({"wsrep_ready": "OFF"}, "wsrep_ready is OFF"),
        ({"wsrep_local_state_comment": "Donor/Desynced"}, "not Synced (Donor/Desynced)"),
        ({"wsrep_local_state_comment": "Joined"}, "not Synced (Joined)"),
        # a Galera node that does not say it is fit is not
        ({"wsrep_cluster_status": None}, "not in the Primary component (unknown)"),
        ({"wsrep_ready": None}, "wsrep_ready is OFF"),
        ({"wsrep_local_state_comment": None}, "not Synced (unknown)"),
        # not a Galera node: its wsrep status means nothing
        ({"wsrep_on": "OFF", "wsrep_cluster_status": "Disconnected"}, None),
    ],
)
def test_unfit(change: dict[str, str | None], reason: str | None) -> None:
    status = {**GALERA_OK, **change}
    assert db.unfit({k: v for k, v in status.items() if v is not None}) == reason


def test_a_plain_server_is_fit() -> None:
    assert db.unfit({"gtid_binlog_pos": "", "gtid_slave_pos": ""}) is None


# --- commit position ---------------------------------------------------------------------


def test_position_of_a_galera_node_is_its_last_commit() -> None:
    assert db.position(GALERA_OK) == "wsrep:42"
    # gtid values do not matter there (they are the same on every node anyway)
    assert db.position({**GALERA_OK, "gtid_binlog_pos": "0-1-9"}) == "wsrep:42"


@pytest.mark.parametrize("committed", ["-1", ""])
def test_position_without_a_galera_seqno_falls_back_to_gtids(committed: str) -> None:
    status = {**GALERA_OK, "wsrep_last_committed": committed, "gtid_binlog_pos": "0-1-9"}
    assert db.position(status) == "gtid:0-1-9/"


def test_position_of_a_plain_server_ignores_wsrep_status() -> None:
    status = {"wsrep_on": "OFF", "wsrep_last_committed": "7", "gtid_binlog_pos": "0-1-9"}
    assert db.position(status) == "gtid:0-1-9/"


def test_position_moves_with_either_gtid() -> None:
    replica = {"wsrep_on": "OFF", "gtid_binlog_pos": "2-2-1", "gtid_slave_pos": "0-1-5"}
    applied = {**replica, "gtid_slave_pos": "0-1-6"}
    local = {**replica, "gtid_binlog_pos": "2-2-2"}
    assert len({db.position(replica), db.position(applied), db.position(local)}) == 3
    assert db.position({"gtid_slave_pos": "0-1-5"}) == "gtid:/0-1-5"


def test_no_position_without_binlog_or_replication() -> None:
    assert db.position({"wsrep_on": "OFF", "gtid_binlog_pos": "", "gtid_slave_pos": ""}) is None


# --- the wiring, against a real server ---------------------------------------------------


def two_ways(d: ScratchDatabase) -> config.DatabaseConfig:
    """One server as two nodes: the socket (preferred) and TCP."""
    return config.DatabaseConfig(
        hosts=(f"{d.host}:{d.port}",),
        socket=str(d.socket),
        user=d.ro_user,
        password=d.ro_password,
        name=d.name,
    )


@pytest.fixture
async def cluster(nmsdb: ScratchDatabase) -> AsyncIterator[tuple[db.Cluster, Clock]]:
    seed_small(nmsdb)
    clock = Clock()
    c = db.Cluster(two_ways(nmsdb), clock=clock)
    yield c, clock
    c.close()


async def test_connections_keep_alive(nmsdb: ScratchDatabase) -> None:
    cfg = two_ways(nmsdb)
    conn = await db.connect(cfg, db.nodes(cfg)[1])
    try:
        sock = conn._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        got = tuple(
            sock.getsockopt(socket.IPPROTO_TCP, opt)
            for opt in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        )
        assert got == db.KEEPALIVE
    finally:
        conn.close()


async def test_watcher_and_snapshot_share_the_node_and_return_to_the_preferred(
    nmsdb: ScratchDatabase, cluster: tuple[db.Cluster, Clock]
) -> None:
    c, clock = cluster
    sock, tcp = c.nodes
    w = db.Watcher(c.cfg, cluster=c)
    await w.changed()
    assert w.node == str(sock)
    c.failed(sock, "no answer within 2 s")  # as if a poll or a snapshot read timed out there
    with nmsdb.admin.cursor() as cur:
        cur.execute("DELETE FROM modem WHERE id = 100002")
    assert await w.changed() == ["modem"] and w.node == str(tcp)
    snap = await db.read_snapshot(c.cfg, cluster=c)
    assert snap.node == str(tcp)
    # the socket answers its probe once due: both go back to it
    clock.now += db.PROBE_INTERVAL
    await c.run_probes()
    assert not c.failures
    assert await w.changed() == [] and w.node == str(sock)
    assert (await db.read_snapshot(c.cfg, cluster=c)).node == str(sock)
    w.close()
    assert c.nodes  # a shared cluster is not the watcher's to close


async def test_a_probe_that_fails_keeps_the_node_failed(
    nmsdb: ScratchDatabase, cluster: tuple[db.Cluster, Clock]
) -> None:
    c, clock = cluster
    cfg = config.DatabaseConfig(
        hosts=(f"{nmsdb.host}:{nmsdb.port}",),
        user=nmsdb.ro_user,
        password="wrong",
        name=nmsdb.name,
    )
    bad = db.Cluster(cfg, clock=clock)
    (node,) = bad.nodes
    bad.failed(node, "down")
    clock.now += db.PROBE_INTERVAL
    await bad.probe_due()
    assert "error 1045" in bad.problems() and bad.due() == []
    # a probe of a healthy node clears it
    c.failed(c.nodes[0], "down")
    assert await c.probe(c.nodes[0]) and not c.failures


async def test_snapshot_skips_a_failed_node_and_clears_it_when_it_delivers(
    nmsdb: ScratchDatabase, cluster: tuple[db.Cluster, Clock]
) -> None:
    c, _ = cluster
    sock, tcp = c.nodes
    c.failed(tcp, "down")
    assert (await db.read_snapshot(c.cfg, cluster=c)).node == str(sock)
    assert tcp in c.failures  # delivering from another node proves nothing about it
    c.failed(sock, "down")
    # every node failed: the failed ones are tried in order; the one that delivers is healthy
    assert (await db.read_snapshot(c.cfg, cluster=c)).node == str(sock)
    assert list(c.failures) == [tcp]


async def test_a_poll_that_fails_moves_the_watcher_within_the_call(
    nmsdb: ScratchDatabase, cluster: tuple[db.Cluster, Clock]
) -> None:
    c, _ = cluster
    sock, tcp = c.nodes
    w = db.Watcher(c.cfg, cluster=c)
    await w.changed()
    assert w.conn is not None and w.node == str(sock)
    with nmsdb.admin.cursor() as cur:
        cur.execute(f"KILL {w.conn.thread_id()}")  # the server drops the watcher's connection
    assert await w.changed() == [] and w.node == str(tcp)  # no error: the next node answered
    assert list(c.failures) == [sock] and "error 2013" in c.problems()
    w.close()
