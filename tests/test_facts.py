"""Host facts: the OMAPI key, TFTP configs granting network access, missing configfiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provhad import cycle, facts
from provhad.render import OmapiKey
from tests import rows
from tests.test_cycle import cfg_for, dhcpd_accepts


def test_omapi_key_is_kept(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    dhcp = tmp_path / "etc/dhcp-nmsprime"
    dhcp.mkdir(parents=True)
    (dhcp / "Kmy_omapi_key.+157+12345.private").write_text(
        "Private-key-format: v1.3\nAlgorithm: 157 (HMAC_MD5)\n"
        "Key: c2VjcmV0b21hcGlrZXkxMjM0NTY3OA==\n"
    )
    assert facts.find_omapi_key(cfg) == OmapiKey("my_omapi_key", "c2VjcmV0b21hcGlrZXkxMjM0NTY3OA==")
    res = cycle.apply(cfg, rows.small(), cycle.gather_facts(cfg))
    assert res.ok and not res.warnings
    (dhcp / "Kmy_omapi_key.+157+12345.private").unlink()
    # from now on the live failover.conf carries it
    assert facts.find_omapi_key(cfg) == OmapiKey("my_omapi_key", "c2VjcmV0b21hcGlrZXkxMjM0NTY3OA==")
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
    count, first = facts.missing_configfiles(cfg, res.model, keep=2)
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


def test_tftp_configs_are_read_again_only_when_they_change(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    cm = tmp_path / "tftpboot/cm"
    cm.mkdir(parents=True)
    (cm / "cm-1.conf").write_text("Main { NetworkAccess 1; }\n")
    (cm / "cm-2.conf").write_text("Main { NetworkAccess 0; }\n")
    cache: dict[str, tuple[facts.ConfStamp, bool]] = {}
    assert facts.network_access_hosts(cfg, cache) == {"cm-1"}
    # unchanged files are answered from the cache: a planted answer shows it was not read
    cache["cm-2.conf"] = (cache["cm-2.conf"][0], True)
    assert facts.network_access_hosts(cfg, cache) == {"cm-1", "cm-2"}
    (cm / "cm-2.conf").write_text("Main { NetworkAccess 0; MaxCPE 4; }\n")
    assert facts.network_access_hosts(cfg, cache) == {"cm-1"}  # changed: read again
    (cm / "cm-1.conf").unlink()
    assert facts.network_access_hosts(cfg, cache) == frozenset()
    assert set(cache) == {"cm-2.conf"}  # a removed file leaves the cache too
    assert facts.network_access_hosts(cfg) == frozenset()  # no cache: every file read


def test_missing_configfiles_are_counted_in_o_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk of modems is looked at again only when it changed or the TFTP listing did;
    the result is always the one a fresh count gives."""
    from provhad import model
    from provhad.snapshot import PackedRows

    cfg = cfg_for(tmp_path)
    cm = tmp_path / "tftpboot/cm"
    cm.mkdir(parents=True)
    snap = rows.small()
    many = [
        rows.modem(200_000 + n, f"02:00:00:{n >> 8 & 255:02x}:{n & 255:02x}:01")
        for n in range(9000)
    ]
    snap = dataclasses.replace(snap, modem=[*snap.modem, *many])
    (cm / "cm-200005.cfg").write_bytes(b"\x00")
    m = model.build(snap, cfg.own_state)
    assert isinstance(m.modems, PackedRows) and len(m.modems.blobs) >= 3
    looked: list[int] = []
    made = PackedRows.made

    def spy(self: PackedRows[object], rows_: object) -> list[object]:
        looked.append(1)
        return made(self, rows_)  # type: ignore[arg-type]

    monkeypatch.setattr(PackedRows, "made", spy)
    check = facts.ConfigfileCheck()
    first = check(cfg, m)
    assert first == facts.missing_configfiles(cfg, m)
    assert first[0] == len(m.modems) + len(m.mtas) - 1
    looked.clear()
    assert check(cfg, m) == first and looked == []  # nothing changed: no chunk looked at
    # one modem renamed: its chunk alone is looked at again
    renamed = [
        dict(r) | {"hostname": "cm-renamed"} if r["id"] == 200_010 else r for r in snap.modem
    ]
    m2 = model.build(dataclasses.replace(snap, modem=renamed), cfg.own_state)
    looked.clear()
    counted = check(cfg, m2)
    assert len(looked) == 1  # the chunk with the renamed modem
    assert counted == facts.missing_configfiles(cfg, m2)
    # a configfile appears (the directory's mtime moves): everything counted again, right
    (cm / "cm-200006.cfg").write_bytes(b"\x00")
    assert check(cfg, m2) == facts.missing_configfiles(cfg, m2) == (first[0] - 1, check(cfg, m2)[1])
    # another TFTP root with the same model: its own listing, not the first root's memo
    other = cfg_for(tmp_path / "other")
    assert check(other, m2) == facts.missing_configfiles(other, m2)
    assert check(cfg, m2) == facts.missing_configfiles(cfg, m2)
