"""Stage, validate with the real daemons, swap: on real files, with real dhcpd/named/chrony."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest

from provhad import config, cycle, publish
from provhad.render import HostFacts, OmapiKey
from provhad.snapshot import Snapshot
from tests import rows

FACTS = HostFacts(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "nmsslave.nmsprime.test", None)


def cfg_for(root: Path, role: str = "slave", max_shrink_percent: float = 100) -> config.Config:
    """The tests' config; the shrink guard is off unless a test is about it (the small
    network shrinks by more than 10 % with any deleted row)."""
    cfg = config.Config(own_state=role).with_root(root)
    return dataclasses.replace(cfg, safety=config.SafetyConfig(max_shrink_percent))


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (the manifest and state excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "var/lib/provhad" not in str(p)
    }


def dhcpd_accepts(root: Path) -> bool:
    conf = root / "etc/dhcp-nmsprime/dhcpd.conf"
    proc = subprocess.run(["dhcpd", "-t", "-q", "-cf", str(conf)], capture_output=True, check=False)
    return proc.returncode == 0


@pytest.mark.parametrize("role", ["slave", "master"])
def test_publish_whole_set_accepted_by_dhcpd(tmp_path: Path, role: str) -> None:
    res = cycle.apply(cfg_for(tmp_path, role), rows.small(), FACTS)
    assert res.ok, res.problems
    assert res.generation == 1 and len(res.written) == 17
    assert set(res.validated) == {"dhcpd -t", "named-checkconf", "chronyd -p", "sh -n"}
    assert dhcpd_accepts(tmp_path)
    assert not list(tmp_path.rglob(".*provhad-*"))  # no staged or check copies left
    manifest = publish.Manifest.load(tmp_path / "var/lib/provhad")
    assert manifest is not None and manifest.generation == 1
    for path, digest in manifest.files.items():
        assert publish.sha256(Path(path).read_bytes()) == digest
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


def _with_optional(text: str) -> Snapshot:
    snap = rows.small()
    pools = [dict(p) for p in snap.ippool]
    pools[1]["optional"] = text
    return dataclasses.replace(snap, ippool=pools)


def test_optional_rejected_by_dhcpd_names_the_pool(tmp_path: Path) -> None:
    res = cycle.apply(cfg_for(tmp_path), _with_optional("option no-such-option 5;"), FACTS)
    assert res.ok, res.problems
    assert res.model is not None
    [reject] = res.model.rejects
    assert (reject.table, reject.id) == ("ippool", 2)
    assert "optional statements rejected by dhcpd" in reject.reason
    assert "no-such-option" in reject.reason or "no option named" in reject.reason
    text = (tmp_path / "etc/dhcp-nmsprime/cmts_gws/1.conf").read_text()
    assert "no-such-option" not in text and "subnet 100.64.0.0 netmask 255.255.255.0" in text
    assert dhcpd_accepts(tmp_path)


def test_invalid_set_leaves_live_set_untouched(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(tmp_path)
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "global.conf.j2").write_text("this is not dhcpd syntax;\n")
    snap = rows.small()
    changed = dataclasses.replace(snap, modem=snap.modem[:1])
    res = cycle.apply(cfg, changed, FACTS)
    assert not res.ok and "nothing was written" in res.error
    assert any("global.conf line 1" in p for p in res.problems), res.problems
    after = tree(tmp_path)
    after.pop("etc/provhad/templates/global.conf.j2")
    assert after == before
    assert not list(tmp_path.rglob(".*provhad-*"))


@pytest.mark.parametrize(
    ("template", "text", "service"),
    [
        ("dhcpupdate.key.j2", 'key dhcpupdate { algorithm hmac-md5; secret "x"; }\n', "named"),
        ("chrony.conf.j2", "allow 10.0.0.0/8\nnot-a-directive\n", "chrony"),
        ("named-ddns.sh.j2", "#!/bin/sh\nif then fi (\n", "ddns"),
    ],
)
def test_other_validators(tmp_path: Path, template: str, text: str, service: str) -> None:
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / template).write_text(text)
    res = cycle.apply(cfg_for(tmp_path), rows.small(), FACTS)
    assert not res.ok and any(p.startswith(f"{service}:") for p in res.problems), res.problems
    assert not (tmp_path / "etc/dhcp-nmsprime/dhcpd.conf").exists()


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
    with pytest.raises(publish.PublishError, match="staging failed"):
        cycle.apply(cfg, dataclasses.replace(snap, modem=more), FACTS)
    after = tree(tmp_path)
    for rel in before:
        if "cmts_gws/" not in rel:
            assert after[rel] == before[rel], rel
    assert not list(tmp_path.rglob(".*provhad-*"))


def test_omapi_key_is_kept(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    dhcp.mkdir(parents=True)
    (dhcp / "Kmy_omapi_key.+157+12345.private").write_text(
        "Private-key-format: v1.3\nAlgorithm: 157 (HMAC_MD5)\n"
        "Key: c2VjcmV0b21hcGlrZXkxMjM0NTY3OA==\n"
    )
    assert publish.find_omapi_key(cfg) == OmapiKey(
        "my_omapi_key", "c2VjcmV0b21hcGlrZXkxMjM0NTY3OA=="
    )
    res = cycle.apply(cfg, rows.small(), cycle.gather_facts(cfg))
    assert res.ok and not res.warnings
    (dhcp / "Kmy_omapi_key.+157+12345.private").unlink()
    # from now on the live failover.conf carries it
    assert publish.find_omapi_key(cfg) == OmapiKey(
        "my_omapi_key", "c2VjcmV0b21hcGlrZXkxMjM0NTY3OA=="
    )
    assert "secret c2VjcmV0b21hcGlrZXkxMjM0NTY3OA==;" in (dhcp / "failover.conf").read_text()


def test_missing_configfiles_are_listed(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    (tmp_path / "tftpboot/cm").mkdir(parents=True)
    (tmp_path / "tftpboot/cm/cm-100000.cfg").write_bytes(b"\x00")
    (tmp_path / "tftpboot/cm/cm-100001.conf").write_text("Main { NetworkAccess 1; }\n")
    res = cycle.apply(cfg, rows.small(), cycle.gather_facts(cfg))
    assert res.missing_configfiles == ["cm/cm-100001.cfg", "cm/cm-100002.cfg", "mta/mta-300000.cfg"]
    assert res.missing_count == 3
    assert "configfiles missing under the TFTP root: 3" in cycle.summary(res)
    assert res.model is not None
    # a big network with an empty TFTP root: counted in full, a few kept as examples
    count, first = publish.missing_configfiles(cfg, res.model, keep=2)
    assert (count, first) == (3, ["cm/cm-100001.cfg", "cm/cm-100002.cfg"])


def test_ignore_cpe_with_multiple_provisioning_systems(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    (tmp_path / "tftpboot/cm").mkdir(parents=True)
    (tmp_path / "tftpboot/cm/cm-100001.conf").write_text("Main { NetworkAccess 1; MaxCPE 2; }\n")
    (tmp_path / "tftpboot/cm/cm-100002.conf").write_text("Main { NetworkAccess 0; }\n")
    snap = dataclasses.replace(
        rows.small(), provbase=[rows.provbase(multiple_provisioning_systems=1)]
    )
    assert cycle.gather_facts(cfg, rows.small()).network_access == frozenset()  # not read
    res = cycle.apply(cfg, snap, cycle.gather_facts(cfg, snap))
    assert res.ok, res.problems
    text = (tmp_path / "etc/dhcp-nmsprime/ignore-cpe.conf").read_text()
    assert "(option agent.remote-id != 00:11:22:33:44:01)" in text
    assert "00:11:22:33:44:02" not in text and "ignore booting;" in text
    assert dhcpd_accepts(tmp_path)


def test_leftovers_of_a_crash_are_cleaned(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    dhcp.mkdir(parents=True)
    (dhcp / ".modems-host.conf.provhad-new").write_text("half")
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    assert not (dhcp / ".modems-host.conf.provhad-new").exists()
    assert os.listdir(dhcp).count("modems-host.conf") == 1


def test_shrink_guard_holds_until_confirmed(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, max_shrink_percent=10)
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    before = tree(tmp_path)
    snap = rows.small()
    shrunk = dataclasses.replace(snap, modem=snap.modem[:1], endpoint=[])  # 6 hosts -> 2
    held = cycle.apply(cfg, shrunk, FACTS)
    assert not held.ok and held.shrink_held
    assert "hosts would drop from 6 to 2 (-67%, more than 10%)" in held.error
    assert "provhad confirm-shrink" in held.error
    assert tree(tmp_path) == before
    (tmp_path / "var/lib/provhad/confirm-shrink").write_text("yes\n")
    res = cycle.apply(cfg, shrunk, FACTS)
    assert res.ok and res.generation == 2 and "published as confirmed" in res.warnings[-1]
    assert not (tmp_path / "var/lib/provhad/confirm-shrink").exists()  # one shot


def test_shrink_guard_counts_a_foreign_live_set(tmp_path: Path) -> None:
    """Before provhad's first publish, the live set (e.g. upstream's) is counted from its files."""
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    (dhcp / "cmts_gws").mkdir(parents=True)
    (dhcp / "modems-host.conf").write_text("".join(f"host cm-{i} {{ }}\n" for i in range(100)))
    res = cycle.apply(cfg_for(tmp_path, max_shrink_percent=10), rows.small(), FACTS)
    assert res.shrink_held and "from 100 to 6" in res.error


def test_shrink_guard_can_be_lowered(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    cfg = dataclasses.replace(cfg, safety=dataclasses.replace(cfg.safety, max_shrink_percent=100))
    assert cycle.apply(cfg, rows.small(), FACTS).ok
    snap = rows.small()
    assert cycle.apply(cfg, dataclasses.replace(snap, modem=snap.modem[:1]), FACTS).ok
    assert publish.shrink_problem({"hosts": 10, "pools": 4}, {"hosts": 9, "pools": 4}, 10) is None
    assert publish.shrink_problem({"hosts": 10, "pools": 4}, {"hosts": 10, "pools": 3}, 10)


def test_quiet_gc_restores_the_collector() -> None:
    import gc

    assert gc.isenabled()
    with cycle.quiet_gc():
        assert not gc.isenabled()
        with cycle.quiet_gc():  # nested: the inner one must not switch it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cycle.quiet_gc():
        raise RuntimeError("a failed rebuild")
    assert gc.isenabled()


def test_tftp_configs_are_read_again_only_when_they_change(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    cm = tmp_path / "tftpboot/cm"
    cm.mkdir(parents=True)
    (cm / "cm-1.conf").write_text("Main { NetworkAccess 1; }\n")
    (cm / "cm-2.conf").write_text("Main { NetworkAccess 0; }\n")
    cache: dict[str, tuple[publish.ConfStamp, bool]] = {}
    assert publish.network_access_hosts(cfg, cache) == {"cm-1"}
    # unchanged files are answered from the cache: a planted answer shows it was not read
    cache["cm-2.conf"] = (cache["cm-2.conf"][0], True)
    assert publish.network_access_hosts(cfg, cache) == {"cm-1", "cm-2"}
    (cm / "cm-2.conf").write_text("Main { NetworkAccess 0; MaxCPE 4; }\n")
    assert publish.network_access_hosts(cfg, cache) == {"cm-1"}  # changed: read again
    (cm / "cm-1.conf").unlink()
    assert publish.network_access_hosts(cfg, cache) == frozenset()
    assert set(cache) == {"cm-2.conf"}  # a removed file leaves the cache too
    assert publish.network_access_hosts(cfg) == frozenset()  # no cache: every file read
