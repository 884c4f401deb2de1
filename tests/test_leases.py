"""The lease-file host stripper: hostile files by hand, real files from a real dhcpd."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provhad import cli
from provhad.hosts import HostDelta
from provhad.leases import LeaseSyntaxError, statements, strip_hosts, without_hosts
from provhad.omapi import ApplyResult
from tests.test_omapi import Dhcpd, cm, dhcpd  # noqa: F401 (dhcpd is a fixture)

LEASE = (
    b"lease 10.0.0.5 {\n"
    b"  starts 4 2026/01/15 12:00:00;\n"
    b"  hardware ethernet 00:11:22:33:44:55;\n"
    b'  uid "\\001\\000\\021\\"}{host x {}";\n'
    b'  client-hostname "host evil { deleted; }";\n'
    b'  set vendor-class-identifier = "docsis3.0;{";\n'
    b'  on commit { set x = "}"; }\n'
    b"}\n"
)
HEAD = (
    b"# The format of this file is documented in the dhcpd.leases(5) manual page.\n"
    b"# This lease file was written by isc-dhcp-4.4.3-P1\n\n"
    b"# authoring-byte-order entry is generated, DO NOT DELETE\n"
    b"authoring-byte-order little-endian;\n\n"
    b'server-duid "\\000\\001\\000\\001-\\345\\332\\002\\336k\\021\\022Z";\n\n'
)
FAILOVER = (
    b'failover peer "dhcpd-failover" state {\n'
    b"  my state normal at 4 2026/01/15 12:00:00;\n"
    b"  partner state normal at 4 2026/01/15 12:00:00;\n}\n"
)
HOST = (
    b"\nhost cm-1 {\n  dynamic;\n  hardware ethernet 00:11:22:33:44:01;\n"
    b'        supersede server.filename = "cm/{cm-1}.cfg";\n}\n'
)
TOMB = b"\nhost cm-7 {\n  dynamic;\n  deleted;\n}\n"
QUOTED = b'host "odd name" { deleted; }\n'


@pytest.mark.parametrize(
    ("data", "want", "count"),
    [
        (b"", b"", 0),
        (HEAD + LEASE + FAILOVER, HEAD + LEASE + FAILOVER, 0),
        (
            HEAD + LEASE + HOST + FAILOVER + TOMB + LEASE,
            HEAD + LEASE + b"\n" + FAILOVER + b"\n" + LEASE,
            2,
        ),
        (HOST + HOST + HOST, b"\n\n\n", 3),
        (QUOTED + LEASE, LEASE, 1),
        (b"# host a { } in a comment\n" + LEASE, b"# host a { } in a comment\n" + LEASE, 0),
        (b"lease 1.2.3.4 { } host a { }\n", b"lease 1.2.3.4 { } \n", 1),  # same line: kept
        (b"host a {\n  x {\n    y;\n  }\n}\nhostname;\n", b"hostname;\n", 1),
    ],
)
def test_only_top_level_host_records_go(data: bytes, want: bytes, count: int) -> None:
    assert without_hosts(data) == (want, count)
    assert without_hosts(want) == (want, 0)  # idempotent


def test_statements_see_through_strings_and_comments() -> None:
    kinds = [s.keyword for s in statements(HEAD + LEASE + HOST + FAILOVER + QUOTED)]
    assert kinds == [
        b"authoring-byte-order",
        b"server-duid",
        b"lease",
        b"host",
        b"failover",
        b"host",
    ]


@pytest.mark.parametrize(
    "data",
    [LEASE[:-3], b'lease 1.2.3.4 { uid "abc; }\n', b"}\n", b"lease 1.2.3.4 { \\\n", b"host a"],
)
def test_a_file_cut_short_is_refused_and_left_alone(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(LeaseSyntaxError):
        without_hosts(HOST + data)
    path = tmp_path / "dhcpd.leases"
    path.write_bytes(HOST + data)
    assert cli.main(["strip-hosts", str(path)]) == 1
    assert path.read_bytes() == HOST + data


def test_the_file_is_replaced_keeping_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "dhcpd.leases"
    path.write_bytes(HEAD + HOST + LEASE)
    os.chmod(path, 0o640)
    os.chown(path, 12345, 23456)
    before = os.stat(path)
    assert strip_hosts(str(path)) == 1
    after = os.stat(path)
    assert path.read_bytes() == HEAD + b"\n" + LEASE
    assert after.st_ino != before.st_ino  # renamed over, never written in place
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (12345, 23456, 0o640)
    assert strip_hosts(str(path)) == 0
    assert os.stat(path).st_ino == after.st_ino  # nothing to strip: not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dhcpd.leases"]


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dhcpd.leases"
    assert cli.main(["strip-hosts", str(path)]) == 0  # no file yet: dhcpd creates it
    path.write_bytes(TOMB + LEASE)
    assert cli.main(["strip-hosts", str(path)]) == 0
    assert path.read_bytes() == b"\n" + LEASE
    assert "1 host records removed" in capsys.readouterr().out


async def test_a_real_lease_file_after_omapi_changes(dhcpd: Dhcpd) -> None:  # noqa: F811
    """dhcpd's own records: after stripping, a restart serves exactly its config again."""
    dhcpd.stop()
    config_host = 'host cm-7 { hardware ethernet 00:11:22:33:44:07; filename "cm/cm-7.cfg"; }\n'
    dhcpd.start(config_host)
    assert dhcpd.lease("00:11:22:33:44:99")  # a lease record for a stranger
    client = dhcpd.client()
    delta = HostDelta(delete=["cm-7"], add=[cm(1), cm(2)])
    assert await client.apply(delta) == ApplyResult(applied=3)
    assert await client.apply(HostDelta(delete=["cm-2"])) == ApplyResult(applied=1)
    await client.close()
    dhcpd.stop()

    data = dhcpd.leases.read_bytes()
    kinds = [s.keyword for s in statements(data)]
    assert kinds.count(b"host") >= 3 and b"lease" in kinds, data.decode()
    others = [data[s.start : s.end] for s in statements(data) if s.keyword != b"host"]
    assert strip_hosts(str(dhcpd.leases)) == kinds.count(b"host")
    after = dhcpd.leases.read_bytes()
    assert [s.keyword for s in statements(after)] == [k for k in kinds if k != b"host"]
    assert [after[s.start : s.end] for s in statements(after)] == others  # byte-identical

    dhcpd.start(config_host)
    client = dhcpd.client()
    assert await client.lookup("cm-7") is not None  # the tombstone no longer hides it
    assert await client.lookup("cm-1") is None  # OMAPI's add did not outlive the restart
    await client.close()
    offer = dhcpd.offer("00:11:22:33:44:07")
    assert offer is not None and offer.file.rstrip(b"\0") == b"cm/cm-7.cfg"
