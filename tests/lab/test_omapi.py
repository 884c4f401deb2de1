"""Host changes reach the slave's running dhcpd by OMAPI in the HA lab (issue 12), and every
doubt falls back to a restart, with the real dhcpd failover pair of tests/lab.

The pair is in failover ``normal``; the CMTS relays to the slave only, with ``secs`` past the
load balancing limit, so the slave answers every client. Each test starts with dhcpd running
the live set and leaves it so. With PROVHAD_LAB_REPORT=1 the measured figures go into
docs/ha-lab.md's OMAPI section.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.ha import GI_CM, POOLS, HALab, configfiles, insert
from tests.lab.netlab import SLAVE_IP
from tests.lab.relay import Client, Relay, Reply, tftp_get
from tests.lab.report import write_omapi_section
from tests.rows import modem

NORMAL = r"failover peer \S+: I move from \S+ to normal"
RESTART_LINE = "=== restart by provhad"
#: ``secs`` of every DISCOVER here: past `load balance max seconds` 5, so the slave answers
#: the master's hash buckets too
SECS = 10
#: modem ids of the clients this module adds (the seeded ones are 100000 + i)
NEW_ID = 200000
#: how many figures the module's tests measure in all (see Lab.figures)
REPORTED = 13


def new_modem(lab: HALab, n: int, hostname: str | None = None) -> tuple[dict[str, Any], Client]:
    """A modem row not in the database yet (no MTA, private), its configfile under the slave's
    TFTP root, and its client."""
    mac = f"00:10:18:02:00:{n:02x}"
    row = modem(NEW_ID + n, mac)
    if hostname:
        row["hostname"] = hostname
    c = Client(str(row["hostname"]), "cm", mac, mac, GI_CM, "docsis3.0")
    configfiles(lab.slave_root, [c])
    return row, c


def renamed(c: Client, hostname: str) -> Client:
    """The same modem under a new hostname (configfile cm/<hostname>.cfg)."""
    return Client(hostname, c.kind, c.mac, c.remote_id, c.giaddr, c.vendor)


def events(lab: HALab, event: str, since: int) -> list[dict[str, str]]:
    """provhad's plain log lines of ``event`` after the mark ``since``, as key=value pairs."""
    out = []
    for line in lab.provhad_log.text()[since:].splitlines():
        if re.search(rf"\bevent={event}(\s|$)", line):
            pairs = re.findall(r"(\w+)=(\"(?:[^\"\\]|\\.)*\"|\S+)", line)
            out.append({k: v.strip('"') for k, v in pairs})
    return out


def wait_event(lab: HALab, event: str, since: int, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not (found := events(lab, event, since)):
        assert lab.daemon_alive(), lab.provhad_log.text()[since:][-2000:]
        assert time.monotonic() < deadline, f"no {event}: {lab.provhad_log.text()[since:][-2000:]}"
        time.sleep(0.05)  # polling provhad's log; bounded by the deadline
    return found[0]


def lookup(lab: HALab, name: str) -> dict[str, object] | None:
    """The host ``name`` in the slave dhcpd's host table (OMAPI, with its key)."""

    async def run() -> dict[str, object] | None:
        client = lab.omapi()
        try:
            return await client.lookup(name)
        finally:
            await client.close()

    return asyncio.run(run())


def host_records(lab: HALab) -> list[str]:
    """The top-level host statements of the slave's lease file (OMAPI's records)."""
    return re.findall(r"^host (\S+) \{", lab.slave_leases.read_text(errors="replace"), re.M)


def wait_state(lab: HALab, pred: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
    """Wait until provhad's state file satisfies ``pred`` (it is saved after each step)."""
    deadline = time.monotonic() + timeout
    while not pred(s := lab.provhad_state()):
        assert time.monotonic() < deadline, {k: v for k, v in s.items() if "dhcpd_r" not in k}
        time.sleep(0.05)  # polling provhad's state file; bounded by the deadline


def settled(lab: HALab, timeout: float = 90) -> None:
    """dhcpd runs the live set (nothing due) and the slave is in failover normal."""
    wait_state(
        lab,
        lambda s: (
            bool(s.get("dhcpd_applied_set"))
            and s.get("dhcpd_applied_set") == s.get("dhcpd_running_set")
            and bool(s.get("dhcpd_last_restart_ok"))
            and not s.get("omapi_inflight")
        ),
        timeout,
    )
    states = lab.slave_log.states()
    assert states and states[-1] == "normal", states


class Lab:
    """The pair in normal state, the relay (to the slave only) and the figures."""

    def __init__(self, lab: HALab, relay: Relay) -> None:
        self.lab = lab
        self.relay = relay
        self.figures: dict[str, Any] = {}

    def serve(self, c: Client, deadline: float = 10) -> Reply | None:
        """DORA of ``c`` with the slave; its ACK or None."""
        return self.relay.lease([c], first_secs=SECS, to=[SLAVE_IP], deadline=deadline).get(c.name)

    def served_by_host(self, c: Client) -> Reply:
        """``c`` gets an ACK from the slave naming its own configfile, which TFTP serves."""
        ack = self.serve(c)
        assert ack is not None, f"{c.name}: no ACK from the slave"
        assert ack.server == SLAVE_IP and ack.filename == f"cm/{c.name}.cfg", ack
        data = tftp_get(self.lab.net.ns("cmts"), ack.siaddr, ack.filename)
        assert data == (self.lab.slave_root / "tftpboot" / ack.filename).read_bytes()
        return ack

    def not_served(self, c: Client) -> None:
        """``c`` has no host entry: the CM pool (deny unknown-clients) gives it nothing."""
        ack = self.serve(c, deadline=6)
        assert ack is None or ack.filename != f"cm/{c.name}.cfg", ack
        assert ack is None, f"{c.name}: a CM without a host entry got {ack}"


@pytest.fixture(scope="module")
def pair(halab: HALab) -> Iterator[Lab]:
    """The slave's provhad runs dhcpd on generation 1; the master's dhcpd joins; both are in
    failover normal with the pools balanced."""
    lab = halab
    lab.wait_running(1, timeout=120)
    lab.start_master()
    lab.master_log.wait(NORMAL, timeout=120)
    lab.slave_log.wait(NORMAL, timeout=120)
    lab.wait_balanced(0, pools=POOLS)
    relay = Relay(lab.net.ns("cmts"), [SLAVE_IP])
    env = Lab(lab, relay)
    try:
        yield env
        # only a run in which every test passed (each adds its figures) is reported
        if os.environ.get("PROVHAD_LAB_REPORT") == "1" and len(env.figures) >= REPORTED:
            write_omapi_section(env.figures)
    finally:
        relay.close()


def test_host_changes_go_live_without_restart(pair: Lab) -> None:
    """A modem added, one deleted and one renamed in one commit while the slave serves: OMAPI,
    the same dhcpd process, the new and the renamed modem served with their files, the deleted
    one not at all."""
    env, lab = pair, pair.lab
    settled(lab)
    modems = [c for c in lab.clients if c.kind == "cm"]
    gone, moved = modems[7], modems[8]  # no MTA, private
    others = [c for c in lab.clients if c.name not in (gone.name, moved.name)][:12]
    for c in (gone, moved, *[c for c in others if c.kind == "cm"]):
        env.served_by_host(c)
    for c in others:  # every other client has a lease from the slave to renew
        if c.kind != "cm":
            assert env.serve(c) is not None, c.name
    pid, log_mark, slave_mark = lab.slave_pid(), lab.provhad_log.mark(), lab.slave_log.mark()
    before = lab.provhad_state()
    row, added = new_modem(lab, 1)
    moved_to = renamed(moved, "cm-renamed-108")
    configfiles(lab.slave_root, [moved_to])

    t_commit = time.monotonic()
    with lab.db.admin.cursor() as cur:  # one transaction: one snapshot sees all three
        cur.execute("START TRANSACTION")
        insert(lab.db, "modem", row)
        cur.execute("DELETE FROM modem WHERE hostname = %s", (gone.name,))
        cur.execute("UPDATE modem SET hostname = %s WHERE hostname = %s",
                    (moved_to.name, moved.name))  # fmt: skip
        cur.execute("COMMIT")
    # the other clients renew from the slave while the change goes live
    rounds = 0
    while not events(lab, "omapi_applied", log_mark):
        renewed = env.relay.renew(others, to=[SLAVE_IP])
        assert {n: r.kind for n, r in renewed.items()} == {c.name: "ack" for c in others}
        rounds += 1
        assert time.monotonic() - t_commit < 60, lab.provhad_log.text()[log_mark:][-2000:]
    applied = wait_event(lab, "omapi_applied", log_mark)
    ack = env.served_by_host(added)
    t_served = ack.at - t_commit
    env.served_by_host(moved_to)
    env.not_served(gone)

    assert (applied["deletes"], applied["adds"]) == ("2", "2"), applied
    assert lab.slave_pid() == pid
    assert RESTART_LINE not in lab.slave_log.text()[slave_mark:]
    assert not events(lab, "omapi_fallback", log_mark)
    published = wait_event(lab, "published", log_mark)
    # the state file tells (STATUS too: both are written by the supervisor's report)
    wait_state(lab, lambda s: s["omapi_hosts"] == before["omapi_hosts"] + 4)
    after = lab.provhad_state()
    assert after["dhcpd_running_set"] == after["dhcpd_applied_set"], after
    assert after["omapi_last"].endswith(" -2 +2"), after
    # dhcpd's own host table, asked by OMAPI
    assert lookup(lab, gone.name) is None
    assert lookup(lab, moved.name) is None
    assert lookup(lab, added.name) == {"name": added.name, "hardware-address": added.mac,
                                       "hardware-type": 1}  # fmt: skip
    assert lookup(lab, moved_to.name) is not None
    # dhcpd recorded OMAPI's changes in its lease file (until its next start strips them)
    assert {added.name, moved_to.name, gone.name, moved.name} <= set(host_records(lab))
    env.figures.update(
        served_s=t_served,
        applied_s=float(applied["seconds"]),
        published_ms=float(published["duration_ms"]),
        renew_rounds=rounds,
        renewing=len(others),
        pid=pid,
        deletes=2,
        adds=2,
    )
    settled(lab)


def test_refused_by_dhcpd_falls_back_to_restart(pair: Lab) -> None:
    """A host of the new modem's name already in dhcpd (added by someone's omshell): dhcpd
    refuses provhad's add, provhad restarts dhcpd, whose start strips the stray record, and
    the modem is served from the files."""
    env, lab = pair, pair.lab
    settled(lab)
    row, c = new_modem(lab, 2)

    async def stray() -> None:  # what an operator's omshell would leave
        from provhad.hosts import HostDelta, HostEntry

        client = lab.omapi()
        try:
            entry = HostEntry(c.name, "00:10:18:02:ff:02", 'filename "cm/stray.cfg";')
            result = await client.apply(HostDelta(delete=[], add=[entry]))
            assert result.ok, result
        finally:
            await client.close()

    asyncio.run(stray())
    assert c.name in host_records(lab)
    pid, log_mark, slave_mark = lab.slave_pid(), lab.provhad_log.mark(), lab.slave_log.mark()
    t_commit = time.monotonic()
    insert(lab.db, "modem", row)
    fallback = wait_event(lab, "omapi_fallback", log_mark)
    assert "add: can't update object" in fallback["reason"], fallback
    lab.slave_log.wait(RESTART_LINE, slave_mark, 30)
    wait_event(lab, "restarted", log_mark)
    assert not events(lab, "omapi_applied", log_mark)
    lab.slave_log.wait(NORMAL, slave_mark, 90)
    ack = env.served_by_host(c)
    assert lab.slave_pid() != pid
    assert c.name not in host_records(lab)  # strip-hosts ran before the start
    assert lookup(lab, c.name) == {"name": c.name, "hardware-address": c.mac, "hardware-type": 1}
    wait_state(lab, lambda s: "update object" in s["omapi_fallback"])
    env.figures.update(refused_served_s=ack.at - t_commit, refused_reason=fallback["reason"])
    settled(lab)


def test_dhcpd_restarted_behind_our_back(pair: Lab) -> None:
    """After OMAPI changes, dhcpd is restarted by someone else: it starts from the files
    (strip-hosts), the added host still served, the deleted one still not; provhad's next
    host change still goes by OMAPI."""
    env, lab = pair, pair.lab
    settled(lab)
    row, c = new_modem(lab, 3)
    gone = [x for x in lab.clients if x.kind == "cm"][9]
    log_mark = lab.provhad_log.mark()
    with lab.db.admin.cursor() as cur:
        cur.execute("START TRANSACTION")
        insert(lab.db, "modem", row)
        cur.execute("DELETE FROM modem WHERE hostname = %s", (gone.name,))
        cur.execute("COMMIT")
    wait_event(lab, "omapi_applied", log_mark)
    assert {c.name, gone.name} <= set(host_records(lab))
    pid, slave_mark = lab.slave_pid(), lab.slave_log.mark()

    lab.restart_slave_behind()
    lab.slave_log.wait(NORMAL, slave_mark, 90)
    assert lab.slave_pid() != pid
    assert host_records(lab) == []
    env.served_by_host(c)
    env.not_served(gone)
    assert lookup(lab, gone.name) is None
    # provhad did nothing meanwhile, and its next host change goes live by OMAPI
    assert not events(lab, "restarted", log_mark) and not events(lab, "omapi_fallback", log_mark)
    pid, log_mark, slave_mark = lab.slave_pid(), lab.provhad_log.mark(), lab.slave_log.mark()
    lab.sql("DELETE FROM modem WHERE hostname = %s", c.name)
    applied = wait_event(lab, "omapi_applied", log_mark)
    assert (applied["deletes"], applied["adds"]) == ("1", "0"), applied
    env.not_served(c)
    assert lab.slave_pid() == pid and RESTART_LINE not in lab.slave_log.text()[slave_mark:]
    env.figures["behind"] = True
    settled(lab)


def test_crash_during_omapi_restarts_dhcpd(pair: Lab) -> None:
    """provhad dies while its OMAPI update hangs (dhcpd stopped): the next provhad finds the
    update in doubt, restarts dhcpd, and the change is served."""
    env, lab = pair, pair.lab
    settled(lab)
    row, c = new_modem(lab, 4)
    pid, log_mark, slave_mark = lab.slave_pid(), lab.provhad_log.mark(), lab.slave_log.mark()
    os.kill(pid, signal.SIGSTOP)
    try:
        insert(lab.db, "modem", row)
        deadline = time.monotonic() + 60
        while not lab.provhad_state().get("omapi_inflight"):
            assert time.monotonic() < deadline, lab.provhad_log.text()[log_mark:][-2000:]
            time.sleep(0.02)  # polling provhad's state file; bounded by the deadline
        lab.kill_daemon()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not events(lab, "omapi_applied", log_mark) and not events(lab, "restarted", log_mark)
    assert RESTART_LINE not in lab.slave_log.text()[slave_mark:]
    lab.spawn_daemon()
    wait_event(lab, "omapi_in_doubt", log_mark)
    wait_event(lab, "restarted", log_mark, 90)
    lab.slave_log.wait(RESTART_LINE, slave_mark, 1)
    lab.slave_log.wait(NORMAL, slave_mark, 90)
    assert lab.slave_pid() != pid
    env.served_by_host(c)
    env.figures["in_doubt"] = True
    settled(lab)


def test_rejected_row_never_reaches_omapi(pair: Lab) -> None:
    """A modem with a bad MAC and a good one in one commit: the bad row is reported and left
    out of the files and of dhcpd, the good one goes live by OMAPI."""
    env, lab = pair, pair.lab
    settled(lab)
    row, good = new_modem(lab, 5)
    bad_row, bad = new_modem(lab, 6)
    bad_row["mac"] = "00:10:18:02:00:zz"
    pid, log_mark = lab.slave_pid(), lab.provhad_log.mark()
    with lab.db.admin.cursor() as cur:
        cur.execute("START TRANSACTION")
        insert(lab.db, "modem", row)
        insert(lab.db, "modem", bad_row)
        cur.execute("COMMIT")
    applied = wait_event(lab, "omapi_applied", log_mark)
    assert (applied["deletes"], applied["adds"]) == ("0", "1"), applied
    wait_state(lab, lambda s: any(str(bad_row["id"]) in r for r in s["rejected"]))
    rejected = [r for r in lab.provhad_state()["rejected"] if str(bad_row["id"]) in r]
    assert rejected and "modem" in rejected[0], lab.provhad_state()["rejected"]
    assert bad.name not in lab.dhcp_file("slave", "modems-host.conf").read_text()
    assert lookup(lab, bad.name) is None
    env.served_by_host(good)
    assert lab.slave_pid() == pid
    env.figures["rejected"] = rejected[0]
    settled(lab)


def subclass_records(lab: HALab) -> list[str]:
    """The top-level subclass statements of the slave's lease file (OMAPI's records)."""
    text = lab.slave_leases.read_text(errors="replace")
    return re.findall(r'^subclass ("[^"]+" \S+) \{', text, re.M)


def modem_and_cpe(lab: HALab, index: int) -> tuple[Client, Client]:
    """A private modem of the seed and the CPE behind it (relayed with its MAC as remote-id)."""
    cm = [c for c in lab.clients if c.kind == "cm"][index]
    return cm, next(c for c in lab.clients if c.kind == "cpe" and c.remote_id == cm.mac)


def test_blocked_modem_goes_live_without_restart(pair: Lab) -> None:
    """A modem loses internet access, then gets it back: blocked.conf changes, and each time
    its CPE's next DISCOVER already meets the new membership, from the same dhcpd process."""
    env, lab = pair, pair.lab
    settled(lab)
    cm, cpe = modem_and_cpe(lab, 10)
    assert env.serve(cpe) is not None, cpe.name
    pid, slave_mark = lab.slave_pid(), lab.slave_log.mark()
    for access, counts in ((0, ("0", "1")), (1, ("1", "0"))):
        log_mark = lab.provhad_log.mark()
        lab.sql("UPDATE modem SET internet_access = %s WHERE hostname = %s", access, cm.name)
        applied = wait_event(lab, "omapi_applied", log_mark)
        assert (applied["subclass_deletes"], applied["subclass_adds"]) == counts, applied
        assert (applied["deletes"], applied["adds"], applied["partial"]) == ("0", "0", "false")
        ack = env.serve(cpe, deadline=6)
        assert (ack is None) == (access == 0), ack
        assert not events(lab, "omapi_fallback", log_mark)
    assert "booting disallowed" in lab.slave_log.text()[slave_mark:]
    assert lab.slave_pid() == pid and RESTART_LINE not in lab.slave_log.text()[slave_mark:]
    # dhcpd recorded the member OMAPI added and then removed (its next start strips both)
    assert subclass_records(lab).count(f'"blocked" {cm.mac}') == 2
    wait_state(lab, lambda s: str(s["omapi_last"]).endswith(" subclass -1 +0"))
    settled(lab)


def test_refused_member_falls_back_to_restart(pair: Lab) -> None:
    """The modem's MAC is in "blocked" already (an operator's omshell): dhcpd refuses
    provhad's add, provhad restarts dhcpd, whose start strips the stray record; the CPE is
    denied by the files' membership."""
    env, lab = pair, pair.lab
    settled(lab)
    cm, cpe = modem_and_cpe(lab, 11)

    async def stray() -> None:
        from provhad.hosts import HostDelta, Member

        client = lab.omapi()
        try:
            assert (await client.apply(HostDelta(join=[Member("blocked", cm.mac)]))).ok
        finally:
            await client.close()

    asyncio.run(stray())
    pid, log_mark, slave_mark = lab.slave_pid(), lab.provhad_log.mark(), lab.slave_log.mark()
    lab.sql("UPDATE modem SET internet_access = 0 WHERE hostname = %s", cm.name)
    fallback = wait_event(lab, "omapi_fallback", log_mark)
    assert "specified object already exists" in fallback["reason"], fallback
    wait_event(lab, "restarted", log_mark, 90)
    assert not events(lab, "omapi_applied", log_mark)
    lab.slave_log.wait(NORMAL, slave_mark, 90)
    assert lab.slave_pid() != pid and subclass_records(lab) == []
    assert env.serve(cpe, deadline=6) is None  # blocked by blocked.conf itself
    log_mark = lab.provhad_log.mark()
    lab.sql("UPDATE modem SET internet_access = 1 WHERE hostname = %s", cm.name)
    applied = wait_event(lab, "omapi_applied", log_mark)  # a config member goes by OMAPI too
    assert (applied["subclass_deletes"], applied["subclass_adds"]) == ("1", "0"), applied
    assert env.serve(cpe) is not None
    settled(lab)
