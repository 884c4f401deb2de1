"""Validation by the real daemons (dhcpd -t, named-checkconf, chronyd -p, sh -n) on real files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provhad import cycle
from provhad.snapshot import Snapshot
from tests import rows
from tests.test_cycle import FACTS, cfg_for, dhcpd_accepts, tree


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
