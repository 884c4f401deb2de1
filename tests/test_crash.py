"""Crash consistency of publishing: kill -9 at random points, a crash at every rename, and a
full or read-only file system while staging. After each crash, generations.recover() must leave
exactly one complete generation live (the previous or the new one) and the manifest naming it.

``PROVHAD_CRASH_KILLS`` (default 1000, about 15 s) sets how many kills the random loop makes and
``PROVHAD_CRASH_SEED`` (default 4) its seed, printed on failure so a run can be repeated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad import config, cycle, generations, model
from provhad.plan import live_hashes, make_plan, stale_files
from provhad.render import HostFacts, RenderedSet, Renderer
from provhad.snapshot import Snapshot
from provhad.testbed import ScratchDatabase
from tests import rows
from tests.daemon_lab import DaemonLab
from tests.test_cli_render import seed_small

REPO = Path(__file__).resolve().parent.parent
FACTS = HostFacts(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "nmsslave.nmsprime.test", None)
KILLS = int(os.environ.get("PROVHAD_CRASH_KILLS", "1000"))
SEED = int(os.environ.get("PROVHAD_CRASH_SEED", "4"))


def crash_cfg(root: Path) -> config.Config:
    """Validators that accept anything (their run time would only dilute the kill points; the
    real ones are tested in test_publish) and no shrink guard (set B drops a gateway)."""
    cfg = config.Config(own_state="slave").with_root(root)
    return dataclasses.replace(
        cfg,
        validate=config.ValidateConfig(dhcpd="true", named_checkconf="true", chronyd="true"),
        safety=config.SafetyConfig(max_shrink_percent=100),
    )


def snapshot_b() -> Snapshot:
    """Set A (rows.small) changed in every way a publish handles: a gateway and its pool gone
    (a stale cmts_gws file to remove), a modem changed, a modem and a pool added."""
    a = rows.small()
    return dataclasses.replace(
        a,
        netgw=[g for g in a.netgw if g["id"] != 2],
        ippool=[p for p in a.ippool if p["netgw_id"] != 2]
        + [rows.pool(6, 1, "CM", "10.1.0.0", "/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")],
        modem=[
            rows.modem(100000, "00:11:22:33:44:aa", public=1),
            *a.modem[1:],
            rows.modem(100009, "00:11:22:33:44:09"),
        ],
    )


def state_dir(cfg: config.Config) -> Path:
    return cfg.paths.under_root(cfg.paths.state_dir)


def publish_once(cfg: config.Config, snap: Snapshot) -> generations.Manifest:
    """What the daemon does per cycle: recover first, then the whole cycle."""
    generations.recover(state_dir(cfg))
    result = cycle.apply(cfg, snap, FACTS)
    assert result.ok, result.error
    manifest = generations.Manifest.load(state_dir(cfg))
    assert manifest is not None
    return manifest


def live_set(cfg: config.Config, paths: set[str]) -> dict[str, str]:
    """Hash of each of ``paths`` that exists, plus every cmts_gws/<id>.conf present."""
    cmts = cfg.paths.under_root(cfg.paths.dhcp_dir) / "cmts_gws"
    found = set(paths) | {str(p) for p in cmts.glob("*.conf") if re.fullmatch(r"\d+\.conf", p.name)}
    return {p: generations.sha256(Path(p).read_bytes()) for p in sorted(found) if os.path.exists(p)}


def one_generation(cfg: config.Config, gens: dict[str, dict[str, str]]) -> str:
    """Which complete generation is live ("A" or "B"); fails on a mix or a wrong manifest."""
    everything = set().union(*(g.keys() for g in gens.values()))
    live = live_set(cfg, everything)
    name = next((n for n, files in gens.items() if files == live), None)
    assert name is not None, f"live set is a mix: {sorted(live.items())}"
    manifest = generations.Manifest.load(state_dir(cfg))
    assert manifest is not None and manifest.files == live, "the manifest names another set"
    assert not (state_dir(cfg) / generations.JOURNAL).exists()
    return name


@pytest.fixture
def two_sets(tmp_path: Path) -> tuple[config.Config, dict[str, dict[str, str]]]:
    """A root with A live, and the complete file sets of A and B (B published once before)."""
    cfg = crash_cfg(tmp_path / "root")
    gens = {"A": publish_once(cfg, rows.small()).files}
    gens["B"] = publish_once(cfg, snapshot_b()).files
    publish_once(cfg, rows.small())
    return cfg, gens


# --- a crash at every rename, deterministically -------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing may catch it."""


def die_at_rename(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th os.replace from now on (1-based) die like a killed process."""
    real_replace = os.replace
    calls = 0

    def dying_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            monkeypatch.setattr(os, "replace", real_replace)
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)


def test_crash_at_every_rename(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, gens = two_sets
    real_replace = os.replace
    outcomes: Counter[str | None] = Counter()
    at = 0
    while True:
        live_before = one_generation(cfg, gens)
        calls = 0

        def dying_replace(
            src: str | os.PathLike[str], dst: str | os.PathLike[str], at: int = at
        ) -> None:
            nonlocal calls
            if calls == at:
                raise Crash
            calls += 1
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", dying_replace)
        try:
            cycle.apply(cfg, snapshot_b() if live_before == "A" else rows.small(), FACTS)
            crashed = False
        except Crash:
            crashed = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        outcomes[generations.recover(state_dir(cfg))] += 1
        now = one_generation(cfg, gens)
        if not crashed:
            assert now != live_before
            break
        at += 1
    # journal, every renamed file, the manifest: each crash point was tried once
    assert at >= 6, at
    assert outcomes["rolled forward"] >= at - 2, outcomes
    # the swap is now whole again; from here the daemon's next cycle publishes normally
    publish_once(cfg, rows.small())
    assert one_generation(cfg, gens) == "A"


def test_roll_back_when_staged_files_are_gone(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staged file that vanished (not fsynced by a broken disk, deleted by a person): the
    new set cannot be completed, so the previous one comes back."""
    cfg, gens = two_sets
    die_at_rename(monkeypatch, 4)  # the journal, then two renames into place
    with pytest.raises(Crash):
        cycle.apply(cfg, snapshot_b(), FACTS)
    journal = generations.Journal.load(state_dir(cfg))
    assert journal is not None
    pending = [tmp for tmp in journal.renames.values() if os.path.exists(tmp)]
    assert pending
    os.unlink(pending[0])
    assert generations.recover(state_dir(cfg)) == "rolled back"
    assert one_generation(cfg, gens) == "A"
    assert generations.recover(state_dir(cfg)) is None


def test_swap_refuses_while_a_crash_is_unrecovered(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, gens = two_sets
    die_at_rename(monkeypatch, 3)
    with pytest.raises(Crash):
        cycle.apply(cfg, snapshot_b(), FACTS)
    # nothing may publish over a half-done swap (cycle.apply calls recover() first)
    with pytest.raises(generations.PublishError, match="interrupted swap is pending"):
        generations.rollback(state_dir(cfg))
    # without the staged files a roll forward needs, the previous set comes back, whole
    generations.clean_leftovers([str(cfg.paths.under_root(cfg.paths.dhcp_dir))])
    assert generations.recover(state_dir(cfg)) == "rolled back"
    assert one_generation(cfg, gens) == "A"


def test_rollback_is_journaled_too(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """generations.rollback (after dhcpd failed with a new set) crashing half-way is finished."""
    cfg, gens = two_sets
    assert generations.mark_running(state_dir(cfg)) is not None  # dhcpd came up with A
    publish_once(cfg, snapshot_b())
    die_at_rename(monkeypatch, 3)  # the journal, one file, then the crash
    with pytest.raises(Crash):
        generations.rollback(state_dir(cfg))
    assert generations.recover(state_dir(cfg)) == "rolled forward"
    assert one_generation(cfg, gens) == "A"
    live = generations.Manifest.load(state_dir(cfg))
    assert generations.rollback(state_dir(cfg)) == live  # A is live: nothing more to do
    assert not (state_dir(cfg) / generations.PREVIOUS).exists()


def test_crash_while_marking_running_keeps_the_old_running_set(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash at any step of mark_running leaves the previous running set whole."""
    cfg, gens = two_sets
    state = state_dir(cfg)
    first = generations.mark_running(state)
    assert first is not None and first.files == gens["A"]
    publish_once(cfg, snapshot_b())
    real_link = os.link
    for step in range(1, 4):  # the first links, then the symlink's rename
        calls = 0

        def dying_link(
            src: str | os.PathLike[str], dst: str | os.PathLike[str], step: int = step
        ) -> None:
            nonlocal calls
            calls += 1
            if calls == step:
                raise Crash
            real_link(src, dst)

        monkeypatch.setattr(os, "link", dying_link)
        with pytest.raises(Crash):
            generations.mark_running(state)
        monkeypatch.setattr(os, "link", real_link)
        assert generations.running(state) == first, step
    die_at_rename(monkeypatch, 1)  # the switch of the running symlink
    with pytest.raises(Crash):
        generations.mark_running(state)
    assert generations.running(state) == first
    # the running files are A's although B replaced the live ones
    for path, digest in first.files.items():
        kept = state / generations.RUNNING / digest
        assert generations.sha256(kept.read_bytes()) == digest, path
    marked = generations.mark_running(state)
    assert marked is not None and marked.files == gens["B"]
    assert generations.running(state) == marked
    # the half-written directories of the crashes are gone, only the current one is left
    dirs = [p.name for p in state.iterdir() if p.name.startswith(f"{generations.RUNNING}.")]
    assert dirs == [os.readlink(state / generations.RUNNING)]


def test_a_damaged_journal_is_named(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]],
) -> None:
    cfg, gens = two_sets
    journal = state_dir(cfg) / generations.JOURNAL
    journal.write_text("{half a journal")
    with pytest.raises(generations.PublishError) as failed:
        generations.recover(state_dir(cfg))
    assert str(failed.value).startswith(f"swap journal unreadable: {journal}: "), failed.value
    journal.unlink()
    assert one_generation(cfg, gens) == "A"


# --- kill -9 at random instants -----------------------------------------------------------------


def publish_rendered(cfg: config.Config, rendered: RenderedSet, counts: dict[str, int]) -> None:
    """The file part of cycle.apply (plan, stage, swap), on a set rendered beforehand."""
    generations.recover(state_dir(cfg))
    generations.clean_leftovers(generations.target_dirs(rendered))
    plan = make_plan(rendered, live_hashes(rendered), stale_files(rendered))
    generations.swap(generations.stage(plan, rendered), state_dir(cfg), counts)


def zygote_main(root: str) -> None:
    """Child process: per line on stdin, fork a worker that publishes A and B alternately until
    it is killed; print its pid, then print "reaped" once it died. Forking from this already
    warm process makes a kill round cost milliseconds instead of a Python start-up, and the
    sets are rendered once here, so the kills land in publishing rather than in rendering."""
    cfg = crash_cfg(Path(root))
    sets = []
    for snap in (rows.small(), snapshot_b()):
        m = model.build(snap, cfg.own_state)
        sets.append((Renderer(cfg).render(m, FACTS), cycle.set_counts(m)))
    # warm up the page cache and time a publish as the workers run it; A is live afterwards
    started = time.monotonic()
    for rendered, counts in (sets[1], sets[0]) * 5:
        publish_rendered(cfg, rendered, counts)
    print(f"ready {(time.monotonic() - started) / 10}", flush=True)
    for _line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                for n in range(1, 10**9):  # B first: A is live
                    publish_rendered(cfg, *sets[n % 2])
            finally:
                os._exit(1)  # only reached on an error: the parent sees the worker end early
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {status}", flush=True)


@contextlib.contextmanager
def zygote(root: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from tests.test_crash import zygote_main; zygote_main({str(root)!r})",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_kill_9_at_random_points(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]],
) -> None:
    cfg, gens = two_sets
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    with zygote(Path(cfg.paths.root)) as z:
        assert z.stdin is not None and z.stdout is not None
        ready = z.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        # kill points spread uniformly over the first three publishes of each worker
        span = 3 * float(ready[1])
        for kill in range(KILLS):
            z.stdin.write("go\n")
            z.stdin.flush()
            pid = int(z.stdout.readline())
            time.sleep(rng.uniform(0, span))  # the random kill point, not a synchronisation
            os.kill(pid, signal.SIGKILL)
            reaped = z.stdout.readline().split()
            assert reaped[:1] == ["reaped"], reaped
            status = int(reaped[1])
            assert os.WIFSIGNALED(status), f"worker ended by itself ({status}); seed {SEED}"
            pending = (state_dir(cfg) / generations.JOURNAL).exists()
            staging = any(Path(cfg.paths.root).rglob(f".*{generations.STAGE_SUFFIX}"))
            try:
                outcome = generations.recover(state_dir(cfg)) or "nothing pending"
                seen[one_generation(cfg, gens)] += 1
            except AssertionError as exc:
                raise AssertionError(f"kill {kill}, seed {SEED}: {exc}") from None
            where = " (mid-swap)" if pending else " (mid-stage)" if staging else ""
            outcomes[outcome + where] += 1
    print(
        f"\n{KILLS} kills, publish ~{span / 3 * 1000:.1f} ms: {dict(outcomes)}; live {dict(seen)}"
    )
    assert sum(outcomes.values()) == KILLS
    assert seen["A"] and seen["B"], seen  # the workers did publish between the kills
    # a share of the kills must have landed inside a swap for the test to mean anything
    assert outcomes["rolled forward (mid-swap)"] + outcomes["completed (mid-swap)"] >= 1, outcomes


# --- a full or read-only file system while staging ------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (needs root and a sandbox that allows mount)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def big_snapshot(modems: int) -> Snapshot:
    a = rows.small()
    extra = [
        rows.modem(110000 + n, f"02:00:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}")
        for n in range(modems)
    ]
    return dataclasses.replace(a, modem=[*a.modem, *extra])


def test_disk_full_while_staging(small_fs: Path) -> None:
    cfg = crash_cfg(small_fs)
    gens = {"A": publish_once(cfg, rows.small()).files}
    with pytest.raises(generations.PublishError) as failed:
        cycle.apply(cfg, big_snapshot(8000), FACTS)
    # the operation, the reason and the path (it was "No space left on device (None)")
    message = str(failed.value)
    assert re.fullmatch(r"staging failed: No space left on device \((/\S+)\)", message), message
    assert message.endswith(f"{generations.STAGE_SUFFIX})") and str(small_fs) in message
    assert one_generation(cfg, gens) == "A"
    assert not list(small_fs.rglob(".*provhad-*")), "staged copies left on a full disk"
    # room again (the big set fits once the file system is bigger): it goes live
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    gens["big"] = publish_once(cfg, big_snapshot(8000)).files
    assert one_generation(cfg, gens) == "big"


def test_read_only_while_staging(small_fs: Path) -> None:
    cfg = crash_cfg(small_fs)
    gens = {"A": publish_once(cfg, rows.small()).files}
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(
            generations.PublishError, match=r"staging failed: Read-only file system"
        ):
            cycle.apply(cfg, snapshot_b(), FACTS)
        assert one_generation(cfg, gens) == "A"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    gens["B"] = publish_once(cfg, snapshot_b()).files
    assert one_generation(cfg, gens) == "B"


if __name__ == "__main__":
    zygote_main(sys.argv[1])


def test_apply_recovers_an_interrupted_swap_first(
    two_sets: tuple[config.Config, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next cycle finishes a swap a crash left behind, then publishes as usual."""
    cfg, gens = two_sets
    assert one_generation(cfg, gens) == "A"
    die_at_rename(monkeypatch, 3)  # in the middle of the renames
    with pytest.raises(Crash):
        cycle.apply(cfg, snapshot_b(), FACTS)
    res = cycle.apply(cfg, snapshot_b(), FACTS)  # no manual recover()
    assert res.ok, res.problems
    assert any("interrupted publish" in w for w in res.warnings), res.warnings
    assert one_generation(cfg, gens) == "B"


def test_kill_9_the_real_daemon_while_it_publishes(tmp_path: Path, nmsdb: ScratchDatabase) -> None:
    """provhad run itself, killed at random moments while changes keep coming: every restart
    comes back READY with exactly the manifest's files live and nothing staged left over, and
    every change made before a kill is live after the next start."""
    kills = int(os.environ.get("PROVHAD_DAEMON_KILLS", "12"))
    rng = random.Random(int(os.environ.get("PROVHAD_CRASH_SEED", "4")))
    seed_small(nmsdb)
    lab = DaemonLab(tmp_path, nmsdb)
    lab.configure()
    added: list[str] = []
    try:
        for n in range(kills):
            lab.start()
            lab.wait(lambda m: m.get("READY") == "1")
            manifest = generations.Manifest.load(lab.root / "var/lib/provhad")
            assert manifest is not None
            for path, digest in manifest.files.items():
                assert generations.sha256(Path(path).read_bytes()) == digest, (n, path)
            # the live directories; the state directory's running set is switched by the
            # supervisor after READY (a temporary symlink there is its business)
            live = lab.root / "etc"
            assert not list(live.rglob(".*provhad-new")), n
            hosts = lab.file("modems-host.conf")
            assert all(f"host {h} " in hosts for h in added), n
            for _ in range(3):
                mid = 130000 + len(added)
                lab.sql(
                    f"INSERT INTO modem (id, hostname, mac) VALUES ({mid}, 'cm-{mid}',"
                    f" '02:00:00:01:{mid >> 8 & 255:02x}:{mid & 255:02x}')"
                )
                added.append(f"cm-{mid}")
            # kill at a random moment of the next few hundred milliseconds: before, during or
            # after the publish these changes cause
            deadline = time.monotonic() + rng.uniform(0.0, 0.8)
            while time.monotonic() < deadline:
                lab.notify.read(max(0.0, deadline - time.monotonic()))
            assert lab.proc is not None
            lab.proc.send_signal(signal.SIGKILL)
            lab.proc.wait(timeout=30)
            lab.notify.drain()
        lab.start()
        lab.wait(lambda m: m.get("READY") == "1")  # the startup cycle read everything
        assert all(f"host {h} " in lab.file("modems-host.conf") for h in added)
    finally:
        if lab.alive():
            lab.stop()
