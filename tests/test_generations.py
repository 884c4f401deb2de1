"""The generation store on real files: stage, swap, manifest, leftovers, the running set and the
rollback to it, the writer lock."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provhad import cycle, generations
from provhad.snapshot import Snapshot
from tests import rows
from tests.test_cli_render import provhad
from tests.test_cycle import FACTS, cfg_for, dhcpd_accepts, tree


@pytest.mark.parametrize("role", ["slave", "master"])
def test_publish_whole_set_accepted_by_dhcpd(tmp_path: Path, role: str) -> None:
    res = cycle.apply(cfg_for(tmp_path, role), rows.small(), FACTS)
    assert res.ok, res.problems
    assert res.generation == 1 and len(res.written) == 17
    assert set(res.validated) == {"dhcpd -t", "named-checkconf", "chronyd -p", "sh -n"}
    assert dhcpd_accepts(tmp_path)
    assert not list(tmp_path.rglob(".*provhad-*"))  # no staged or check copies left
    manifest = generations.Manifest.load(tmp_path / "var/lib/provhad")
    assert manifest is not None and manifest.generation == 1
    for path, digest in manifest.files.items():
        assert generations.sha256(Path(path).read_bytes()) == digest
    secret_files = [
        "etc/dhcp-nmsprime/dhcpd.conf",
        "etc/dhcp-nmsprime/failover.conf",
        "etc/named-nmsprime.d/dhcpupdate.key",
        "etc/dhcp-nmsprime/named-ddns.sh",
    ]
    for rel in secret_files:
        assert (tmp_path / rel).stat().st_mode & 0o007 == 0, rel


def test_no_change_writes_nothing(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = cycle.apply(cfg, rows.small(), FACTS)
    assert again.ok and not again.changed and again.generation == 1
    assert again.services == set()
    assert again.validated == []  # nothing to publish: the validators are not even run
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_only_changed_files_are_written(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    changed = dataclasses.replace(
        snap, modem=[*snap.modem, rows.modem(100020, "00:11:22:33:44:20")]
    )
    res = cycle.apply(cfg, changed, FACTS)
    assert res.ok and res.generation == 2
    assert res.written == [str(tmp_path / "etc/dhcp-nmsprime/modems-host.conf")]
    assert res.services == {"dhcpd"}
    assert b"host cm-100020 " in (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_bytes()


def test_deleted_cmts_file_is_removed(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    gone = dataclasses.replace(snap, netgw=snap.netgw[:1])
    res = cycle.apply(cfg, gone, FACTS)
    assert res.ok and res.removed == [str(tmp_path / "etc/dhcp-nmsprime/cmts_gws/2.conf")]
    assert not (tmp_path / "etc/dhcp-nmsprime/cmts_gws/2.conf").exists()
    assert dhcpd_accepts(tmp_path)


def test_staging_failure_is_clear_and_harmless(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(tmp_path)
    cmts = tmp_path / "etc/dhcp-nmsprime/cmts_gws"
    for f in cmts.iterdir():
        f.unlink()
    cmts.rmdir()
    cmts.write_text("a file where a directory should be\n")  # makes the staging fail
    snap = rows.small()
    more = [*snap.modem, rows.modem(100030, "00:11:22:33:44:30")]
    with pytest.raises(generations.PublishError, match="staging failed"):
        cycle.apply(cfg, dataclasses.replace(snap, modem=more), FACTS)
    after = tree(tmp_path)
    for rel in before:
        if "cmts_gws/" not in rel:
            assert after[rel] == before[rel], rel
    assert not list(tmp_path.rglob(".*provhad-*"))


def test_leftovers_of_a_crash_are_cleaned(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    dhcp.mkdir(parents=True)
    (dhcp / ".modems-host.conf.provhad-new").write_text("half")
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    assert not (dhcp / ".modems-host.conf.provhad-new").exists()
    assert os.listdir(dhcp).count("modems-host.conf") == 1


# --- the running set and the rollback to it -------------------------------------------------------


def changed_modem() -> Snapshot:
    """rows.small with one modem's MAC changed: modems-host.conf differs, blocked.conf not."""
    snap = rows.small()
    return dataclasses.replace(
        snap, modem=[rows.modem(100000, "00:11:22:33:44:aa"), *snap.modem[1:]]
    )


def another_blocked_modem(snap: Snapshot) -> Snapshot:
    """``snap`` with one more modem without internet access: blocked.conf changes too."""
    more = rows.modem(100040, "00:11:22:33:44:40", internet_access=0)
    return dataclasses.replace(snap, modem=[*snap.modem, more])


def test_rollback_restores_every_file_since_the_running_set(tmp_path: Path) -> None:
    """gen 2 changes modems-host.conf (its restart is delayed), gen 3 blocked.conf (its restart
    fails): the rollback brings both back to what dhcpd last came up with (gen 1)."""
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    running = generations.mark_running(state)
    assert running is not None and running.generation == 1
    gen1 = tree(tmp_path)
    gen2 = cycle.apply(cfg, changed_modem(), FACTS)
    assert str(dhcp / "modems-host.conf") in gen2.written
    assert str(dhcp / "blocked.conf") not in gen2.written
    gen3 = cycle.apply(cfg, another_blocked_modem(changed_modem()), FACTS)
    assert str(dhcp / "blocked.conf") in gen3.written and gen3.generation == 3
    back = generations.rollback(state)
    assert back is not None and back.generation == 4 and back.files == running.files
    assert tree(tmp_path) == gen1  # modems-host.conf too, not only the last swap's files
    assert generations.Manifest.load(state) == back
    assert generations.running(state) == running  # still what dhcpd came up with
    assert dhcpd_accepts(tmp_path)
    assert not list(tmp_path.rglob(".*provhad-*"))
    assert not (state / generations.JOURNAL).exists()


def test_rollback_without_a_running_set_changes_nothing(tmp_path: Path) -> None:
    """A first install whose dhcpd does not come up keeps its files (it used to delete them)."""
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    assert cycle.apply(cfg, changed_modem(), FACTS).ok
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert generations.running(state) is None
    assert generations.rollback(state) is None
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert generations.mark_running(tmp_path / "nothing-live") is None


def test_rollback_removes_only_stale_cmts_files(tmp_path: Path) -> None:
    """Files the running set lacks are kept, except cmts_gws/<id>.conf: the restored
    cmts_gws.conf no longer includes them."""
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    snap = rows.small()
    one_gw = dataclasses.replace(
        snap,
        netgw=snap.netgw[:1],
        ippool=[p for p in snap.ippool if p["netgw_id"] == 1],
    )
    assert cycle.apply(cfg, one_gw, FACTS).ok
    assert not (dhcp / "cmts_gws/2.conf").exists()
    running = generations.mark_running(state)
    assert running is not None
    assert cycle.apply(cfg, snap, FACTS).ok  # gateway 2 comes (back)
    # a file only the live set names (e.g. a template new in this provhad version)
    live = generations.Manifest.load(state)
    assert live is not None
    extra = dhcp / "extra.conf"
    extra.write_bytes(b"# new\n")
    files = {**live.files, str(extra): generations.sha256(b"# new\n")}
    dataclasses.replace(live, files=files).store(state)
    back = generations.rollback(state)
    assert back is not None
    assert not (dhcp / "cmts_gws/2.conf").exists()
    assert extra.read_bytes() == b"# new\n" and back.files[str(extra)] == files[str(extra)]
    assert {p: d for p, d in back.files.items() if p != str(extra)} == running.files
    assert dhcpd_accepts(tmp_path)


def test_running_set_survives_later_swaps(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    first = generations.mark_running(state)
    assert first is not None
    assert generations.mark_running(state) == first  # the same set: nothing new written
    assert cycle.apply(cfg, changed_modem(), FACTS).ok
    for digest in first.files.values():  # hard links keep gen 1's content
        assert generations.file_sha256(str(state / "running" / digest)) == digest
    second = generations.mark_running(state)
    assert second is not None and second.generation == 2
    assert generations.running(state) == second
    assert len([p for p in state.iterdir() if p.name.startswith("running.")]) == 1


def test_mark_running_refuses_a_live_file_changed_by_hand(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    (tmp_path / "etc/dhcp-nmsprime/global.conf").write_text("# edited\n")
    with pytest.raises(generations.PublishError, match=r"global\.conf is not the content"):
        generations.mark_running(state)
    assert generations.running(state) is None
    assert not [p for p in state.iterdir() if p.name.startswith("running")]


def test_a_file_dhcpd_holds_by_omapi_is_kept_beside_the_running_set(tmp_path: Path) -> None:
    """After a partial live update the host file dhcpd holds is neither the running set's nor
    (later) the live one: kept by its hash, the next host delta starts from it; the running
    manifest, a rollback's target, stays."""
    cfg = cfg_for(tmp_path)
    state = tmp_path / "var/lib/provhad"
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    first = generations.mark_running(state)
    assert cycle.apply(cfg, changed_modem(), FACTS).ok
    live = tmp_path / "etc/dhcp-nmsprime/modems-host.conf"
    digest = generations.file_sha256(str(live))
    assert not generations.running_file(state, digest).exists()
    generations.keep_held(state, live, digest)
    assert generations.running_file(state, digest).read_bytes() == live.read_bytes()
    generations.keep_held(state, live, digest)  # again: nothing to do
    assert generations.running(state) == first
    with pytest.raises(generations.PublishError, match="changed while it was kept"):
        generations.keep_held(state, live, "0" * 64)
    assert not generations.running_file(state, "0" * 64).exists()


# --- one writer -----------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from provhad.generations import WriterLock
with WriterLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_writer_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    state = tmp_path / "root/var/lib/provhad"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(generations.Busy) as busy, generations.WriterLock(state):
            pass
        assert busy.value.pid == holder.pid and str(holder.pid) in str(busy.value)
        conf = tmp_path / "c.toml"
        conf.write_text('[database]\nhosts = ["127.0.0.1:1"]\n[provha]\nown_state = "slave"\n')
        proc = provhad("render", "--config", conf, "--root", tmp_path / "root")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"provhad run (pid {holder.pid}) owns {state}" in proc.stderr
        assert "use `provhad trigger` or `systemctl reload provhad`" in proc.stderr
        assert not (tmp_path / "root/etc").exists()  # it did not even read the database
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder is gone, and with it the lock (the kernel drops it with the process)
    with generations.WriterLock(state) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
    assert lock.path.read_text() == ""


def test_writer_lock_dies_with_its_holder(tmp_path: Path) -> None:
    """kill -9 of the holder frees the lock: no stale lock file to clean up by hand."""
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    holder.kill()
    holder.wait(timeout=30)
    with generations.WriterLock(state):
        pass
    assert holder.stdin is not None
    holder.stdin.close()
