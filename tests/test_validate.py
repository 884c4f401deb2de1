"""Validation by the real daemons (dhcpd -t, named-checkconf, chronyd -p, sh -n) on real files."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import pytest

from provhad import cycle, generations, model, validate
from provhad.plan import make_plan
from provhad.render import DHCPD, INCLUDERS, Renderer, builtin_templates
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


# --- a full validation in pieces (issue 12) ------------------------------------------------------

#: pieces of 7 hosts from 10 hosts on: the sets below are cut into several pieces
SMALL_PIECES = validate.Pieces(from_hosts=10, hosts=7)
WHOLE = validate.Pieces(from_hosts=0)
MIDDLE = 200_020  # the id of a modem in the middle of _network(40)


def _network(n: int) -> Snapshot:
    """The small network with ``n`` more modems (ids from 200000)."""
    snap = rows.small()
    more = [rows.modem(200_000 + i, f"00:11:22:44:{i // 256:02x}:{i % 256:02x}") for i in range(n)]
    return dataclasses.replace(snap, modem=[*snap.modem, *more])


def _modem_template(root: Path, only: int, what: str, where: str = "body") -> None:
    """An operator's modems-host.conf template that renders ``what`` for modem ``only``: in
    its block (``where="body"``), or as its host name (``where="name"``)."""
    text = (builtin_templates() / "modems-host.conf.j2").read_text()
    if where == "body":
        old = 'ddns-hostname "{{ m.hostname }}";'
        new = old + f"{{% if m.id == {only} %}} {what}{{% endif %}}"
    else:
        old = "{% else %}{{ m.hostname }}{% endif %} {"
        new = f"{{% elif m.id == {only} %}}{what}{old}"
    assert old in text
    over = root / "etc/provhad/templates"
    over.mkdir(parents=True, exist_ok=True)
    (over / "modems-host.conf.j2").write_text(text.replace(old, new))


def _both(
    root: Path, snap: Snapshot, dhcpd: str = ""
) -> tuple[validate.Validation, validate.Validation, str]:
    """dhcpd's verdict on the set of ``snap`` staged under ``root``: whole, and in pieces;
    and the rendered modems-host.conf. ``dhcpd``: another dhcpd binary."""
    cfg = cfg_for(root)
    if dhcpd:
        cfg = dataclasses.replace(cfg, validate=dataclasses.replace(cfg.validate, dhcpd=dhcpd))
    renderer = Renderer(cfg)
    m = model.build(snap, "slave")
    rendered = renderer.render(m, FACTS)
    staged = generations.stage(make_plan(rendered, {}, []), rendered)
    try:
        generations.write_checks(
            staged, functools.partial(renderer.render, m, FACTS, only=INCLUDERS)
        )
        whole = validate.run(staged, cfg.validate, {DHCPD}, WHOLE)
        split = validate.run(staged, cfg.validate, {DHCPD}, SMALL_PIECES)
    finally:
        generations.discard(staged)
    assert whole.checked == ["dhcpd -t"] and split.checked == [validate.IN_PIECES]
    return whole, split, rendered.files[f"{rendered.dhcp_dir}/modems-host.conf"].data.decode()


def _where(check: validate.Validation) -> list[tuple[str | None, int | None, str]]:
    return [(p.path, p.line, p.message) for p in check.problems]


def test_pieces_agree_with_the_whole_dhcpd_t_on_a_good_set(tmp_path: Path) -> None:
    whole, split, _ = _both(tmp_path, _network(40))
    assert whole.ok and split.ok, (whole.problems, split.problems)
    assert whole.notes == split.notes == []
    assert not list(Path(tempfile.gettempdir()).glob("provhad-pieces-*"))


@pytest.mark.parametrize(
    ("where", "what", "said"),
    [
        ("body", "no-such-statement 1;", "semicolon expected"),
        ("body", "option ccc.no-such 1;", "unknown option ccc.no-such"),
        ("body", 'filename "a" "b";', "semicolon expected"),
        ("name", "cm-200003", "host cm-200003: already exists"),  # the first piece's
    ],
)
def test_pieces_name_the_same_file_and_line_as_the_whole_dhcpd_t(
    tmp_path: Path, where: str, what: str, said: str
) -> None:
    _modem_template(tmp_path, MIDDLE, what, where)
    whole, split, text = _both(tmp_path, _network(40))
    assert not whole.ok and not split.ok
    first = _where(split)[0]
    assert first == _where(whole)[0], (whole.problems, split.problems)
    assert first[0] == str(tmp_path / "etc/dhcp-nmsprime/modems-host.conf") and said in first[2]
    assert first[1] is not None and first[1] > 21  # past the first pieces
    assert text.split("\n")[first[1] - 1].startswith(
        f"host {what if where == 'name' else f'cm-{MIDDLE}'} "
    )


def test_a_hardware_address_twice_passes_both_and_is_noted(tmp_path: Path) -> None:
    snap = _network(40)
    modems = [dict(r) for r in snap.modem]
    modems[-1]["mac"] = modems[-30]["mac"]  # two names, one MAC, in different pieces
    whole, split, _ = _both(tmp_path, dataclasses.replace(snap, modem=modems))
    assert whole.ok and split.ok, (whole.problems, split.problems)
    twice = f"hosts cm-{modems[-30]['id']}, cm-{modems[-1]['id']}"
    assert whole.notes == split.notes and len(split.notes) == 1 and twice in split.notes[0]


def test_the_rest_of_the_set_is_checked_whole_beside_the_pieces(tmp_path: Path) -> None:
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "global.conf.j2").write_text("# a comment\nthis is not dhcpd syntax;\n")
    whole, split, _ = _both(tmp_path, _network(40))
    assert _where(split)[0] == _where(whole)[0]
    assert _where(split)[0][:2] == (str(tmp_path / "etc/dhcp-nmsprime/global.conf"), 2)


def test_a_bad_host_in_a_big_set_is_left_out_by_its_row_through_the_pieces(
    tmp_path: Path,
) -> None:
    _modem_template(tmp_path, MIDDLE, "no-such-statement 1;")
    res = cycle.apply(cfg_for(tmp_path), _network(40), FACTS, pieces=SMALL_PIECES)
    assert res.ok, res.problems
    assert res.validated[0] == validate.IN_PIECES
    assert res.unproven and not res.hosts_only  # dhcpd -t reads it whole before a restart
    [reject] = res.rejected_by_dhcpd
    assert (reject.table, reject.id) == ("modem", MIDDLE), reject
    assert "rejected by dhcpd" in reject.reason
    hosts = (tmp_path / "etc/dhcp-nmsprime/modems-host.conf").read_text()
    assert f"cm-{MIDDLE} " not in hosts and f"cm-{MIDDLE + 1} " in hosts
    assert dhcpd_accepts(tmp_path)
    # the whole dhcpd -t leaves out the same row and writes the same files
    other = tmp_path / "whole"
    _modem_template(other, MIDDLE, "no-such-statement 1;")
    alone = cycle.apply(cfg_for(other), _network(40), FACTS, pieces=WHOLE)
    assert alone.validated[0] == "dhcpd -t" and not alone.unproven
    assert [(r.table, r.id) for r in alone.rejected_by_dhcpd] == [("modem", MIDDLE)]
    assert (other / "etc/dhcp-nmsprime/modems-host.conf").read_text() == hosts


@pytest.mark.parametrize(
    ("before", "after"),
    [("group {\n", "}\n"), ("", "")],  # no piece holds whole blocks; hosts not at line start
)
def test_host_files_the_cut_cannot_follow_are_checked_whole(
    tmp_path: Path, before: str, after: str
) -> None:
    """An operator's template that wraps the hosts in a group, or indents them."""
    text = (builtin_templates() / "modems-host.conf.j2").read_text()
    if not before:
        assert "\nhost " in text
        text = text.replace("\nhost ", "\n  host ")
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "modems-host.conf.j2").write_text(before + text + after)
    res = cycle.apply(cfg_for(tmp_path), _network(40), FACTS, pieces=SMALL_PIECES)
    assert res.ok and res.validated[0] == "dhcpd -t", (res.validated, res.problems)


def test_host_duplicates_are_exact_names_and_case_folded_macs() -> None:
    a, b = "/etc/dhcp-nmsprime/modems-host.conf", "/etc/dhcp-nmsprime/mta.conf"
    files = {
        a: b"host cm-1 { hardware ethernet 00:11:22:33:44:55; }\n"
        b"host CM-1 { hardware ethernet 00:11:22:33:44:56; }\n",
        b: b"# a comment\nhost mta-1 { hardware ethernet 00:11:22:33:44:AA; }\n"
        b"host cm-1 { hardware ethernet 00:11:22:33:44:aa; }\n",
    }
    problems, notes = validate.host_duplicates(files)
    assert [str(p) for p in problems] == [f"dhcpd: {b} line 3: host cm-1: already exists"]
    assert len(notes) == 1 and "00:11:22:33:44:aa is used by hosts mta-1, cm-1" in notes[0]
    index = validate.HostIndex()
    index.add(files[a], files[a].index(b"host CM-1"))  # from a line start: CM-1 only
    assert index.names == [b"CM-1"] and index.mac_count == 1
    assert validate.host_duplicates({a: files[a]}) == ([], [])


def test_a_dhcpd_that_cannot_run_fails_the_pieces_too(tmp_path: Path) -> None:
    whole, split, _ = _both(tmp_path, _network(40), str(tmp_path / "no-dhcpd"))
    assert not whole.ok and not split.ok
    assert any("no-dhcpd: not found" in p.message for p in split.problems), split.problems
