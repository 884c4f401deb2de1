"""The lease-file host stripper: hostile files by hand, real files from a real dhcpd."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provhad import cli
from provhad.hosts import HostDelta, Member
from provhad.leases import LeaseSyntaxError, statements, strip_hosts, without_hosts
from provhad.omapi import ApplyResult
from tests.test_omapi import CLASSES, Dhcpd, blocked, cm, dhcpd  # noqa: F401 (a fixture)

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
SUBCLASS = (
    b'\nsubclass "blocked" 00:11:22:33:44:02 {\n  dynamic;\n\n'
    b"        supersede server.allow-booting = 00;}\n"
)
PRINTABLE = b'subclass "Client-Public" "ABC;}{" {\n  deleted;\n  lease limit 4;\n}\n'
BILLED = b'lease 10.0.0.6 {\n  billing subclass "Client-Public" 00:11:22:33:44:05;\n}\n'
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
        (HEAD + SUBCLASS + LEASE + PRINTABLE + BILLED, HEAD + b"\n" + LEASE + BILLED, 2),
        (QUOTED + LEASE, LEASE, 1),
        (b"# host a { } in a comment\n" + LEASE, b"# host a { } in a comment\n" + LEASE, 0),
        (b"lease 1.2.3.4 { } host a { }\n", b"lease 1.2.3.4 { } \n", 1),  # same line: kept
        (b"host a {\n  x {\n    y;\n  }\n}\nhostname;\n", b"hostname;\n", 1),
    ],
)
def test_only_top_level_host_and_subclass_records_go(data: bytes, want: bytes, count: int) -> None:
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
    assert "1 host/subclass records removed" in capsys.readouterr().out


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


async def test_a_real_lease_file_after_omapi_subclass_changes(dhcpd: Dhcpd) -> None:  # noqa: F811
    """The subclass records flip-flop like hosts: a member OMAPI added outlives a restart
    without it in the config, one it removed stays removed with it back in the config. After
    stripping, a restart serves the config's membership, and the leases (their billing lines
    too) are byte for byte what they were."""
    public = Member("Client-Public", "00:11:22:33:44:05")
    config = CLASSES + f'subclass "Client-Public" {public.mac};\n'
    dhcpd.stop()
    dhcpd.start(config)
    assert dhcpd.lease(public.mac)  # a lease billed to the config's member
    client = dhcpd.client()
    assert (await client.apply(HostDelta(join=[blocked(1), blocked(2)]))).ok
    assert (await client.apply(HostDelta(leave=[blocked(1), public]))).ok
    await client.close()
    # the files as provhad publishes them meanwhile: 1 blocked again, 2 not, public unchanged
    config += f'subclass "blocked" {blocked(1).mac};\n'
    dhcpd.stop()
    data = dhcpd.leases.read_bytes()
    kinds = [s.keyword for s in statements(data)]
    assert kinds.count(b"subclass") == 3, data.decode()  # 1 and 2 added, then 1 deleted
    assert b'billing subclass "Client-Public" 00:11:22:33:44:05;' in data, data.decode()
    others = [data[s.start : s.end] for s in statements(data) if s.keyword != b"subclass"]
    stripped, count = without_hosts(data)
    assert count == 3 and [stripped[s.start : s.end] for s in statements(stripped)] == others

    dhcpd.start(config)  # without stripping: dhcpd's records override the config
    assert dhcpd.offer(blocked(1).mac) is not None and dhcpd.offer(blocked(2).mac) is None
    dhcpd.stop()
    # dhcpd rewrote the file at its start: the member it holds by OMAPI is still recorded
    assert strip_hosts(str(dhcpd.leases)) == 1
    assert b"subclass" not in dhcpd.leases.read_bytes().replace(b"billing subclass", b"")

    dhcpd.start(config)
    assert dhcpd.offer(blocked(1).mac) is None and dhcpd.offer(blocked(2).mac) is not None
    client = dhcpd.client()
    assert await client.member(public) is not None and await client.member(blocked(2)) is None
    await client.close()


def test_the_command_takes_both_distributions_paths(tmp_path: Path) -> None:
    el, debian, bad = tmp_path / "el.leases", tmp_path / "debian.leases", tmp_path / "bad"
    debian.write_bytes(HOST + LEASE)
    assert cli.main(["strip-hosts", str(el), str(debian)]) == 0
    assert debian.read_bytes() == b"\n" + LEASE
    bad.write_bytes(HOST + b"host a")
    debian.write_bytes(HOST + LEASE)
    assert cli.main(["strip-hosts", str(bad), str(debian)]) == 1  # the other one still done
    assert debian.read_bytes() == b"\n" + LEASE and bad.read_bytes() == HOST + b"host a"


ANALYZE = shutil.which("systemd-analyze")
GENERATOR = Path("/lib/systemd/system-generators/systemd-sysv-generator")
DROPIN = Path(__file__).parent.parent / "systemd" / "dhcpd-provhad.conf"


@pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["dhcpd.service", "isc-dhcp-server.service"])
def test_the_drop_in_is_read_with_dhcpds_unit(tmp_path: Path, unit: str) -> None:
    """systemd-analyze verify reads the unit with the drop-in beside it: Debian's unit as
    systemd-sysv-generator makes it from /etc/init.d, a stand-in for EL's dhcpd.service. The
    drop-in's command is pointed at a missing path once to prove verify reads it at all."""
    units = tmp_path / "units"
    units.mkdir()
    if unit == "isc-dhcp-server.service":
        if not (GENERATOR.exists() and Path("/etc/init.d/isc-dhcp-server").exists()):
            pytest.skip("needs Debian's isc-dhcp-server and systemd-sysv-generator")
        gen = tmp_path / "gen"
        gen.mkdir()
        subprocess.run([GENERATOR, gen, gen, gen], check=True, capture_output=True)
        (units / unit).write_text((gen / unit).read_text())
    else:
        (units / unit).write_text(
            "[Unit]\nDescription=DHCPv4 Server Daemon\n[Service]\nType=notify\n"
            "ExecStart=/usr/sbin/dhcpd -f -cf /etc/dhcp/dhcpd.conf -user dhcpd -group dhcpd\n"
        )
    text = DROPIN.read_text()
    assert "ExecStartPre=-/opt/provhad/venv/bin/provhad strip-hosts " in text
    (units / f"{unit}.d").mkdir()
    dropin = units / f"{unit}.d" / "provhad.conf"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}

    def verify() -> list[str]:
        proc = subprocess.run(
            [ANALYZE or "", "verify", "--man=no", str(units / unit)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        return [ln for ln in proc.stderr.splitlines() if "provhad" in ln]

    installed = "ExecStartPre=-/opt/provhad/venv/bin/provhad"
    # verify ignores a missing command behind "-": without it, it names the drop-in's one
    dropin.write_text(text.replace(installed, "ExecStartPre=/nonexistent/provhad"))
    assert any("/nonexistent/provhad" in ln for ln in verify()), "the drop-in was not read"
    here = shutil.which("provhad") or str(Path(sys.executable).parent / "provhad")
    dropin.write_text(text.replace(installed, f"ExecStartPre={here}"))
    assert verify() == []
    dropin.write_text(text)
    assert verify() == []
