"""Host entries (as OMAPI carries them) and the delta between two host tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from provhad import config, hosts, model, validate
from provhad.hosts import (
    HostDelta,
    HostEntry,
    HostSyntaxError,
    Member,
    changed_members,
    delta,
    file_delta,
    host_block,
    host_entries,
    names_by_mac,
    parse_host_block,
    parse_host_file,
    split_statements,
)
from provhad.render import HostFacts, Renderer
from tests import rows

FACTS = HostFacts(now=dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC), fqdn="slave.test", omapi=None)


def cm(n: int, mac: str | None = None, stmts: str | None = None) -> HostEntry:
    return HostEntry(
        f"cm-{n}",
        mac or f"00:11:22:33:44:{n:02x}",
        stmts if stmts is not None else f'filename "cm/cm-{n}.cfg"; ddns-hostname "cm-{n}";',
    )


def table(*entries: HostEntry) -> dict[str, HostEntry]:
    return {e.name: e for e in entries}


@pytest.mark.parametrize("provvoip", [True, False])
def test_entries_from_the_model_equal_the_rendered_host_files(
    tmp_path: Path, provvoip: bool
) -> None:
    cfg = config.Config().with_root(str(tmp_path))
    cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, provvoip=provvoip))
    m = model.build(rows.small(), "slave")
    rendered = Renderer(cfg).render(m, FACTS)
    parsed: dict[str, HostEntry] = {}
    names = ["modems-host.conf", "endpoints-host.conf"] + (["mta.conf"] if provvoip else [])
    for name in names:
        path = f"{rendered.dhcp_dir}/{name}"
        parsed.update(parse_host_file(rendered.files[path].data.decode(), path))
    entries = host_entries(m, provvoip)
    assert entries == parsed
    # the case the ccc options depend on is present, so the comparison covers them
    assert any("ccc.dhcp-server-1" in e.statements for e in entries.values()) is provvoip
    assert entries["cpe-b"].mac is None and entries["cpe-b"].remote_id == "00:11:22:33:44:01"
    assert entries["cpe-a"].fixed_address == "198.18.0.15" and entries["cpe-a"].statements == ""


def test_a_host_block_reads_back_as_the_same_entry() -> None:
    for e in (
        cm(1),
        HostEntry("cpe-a", "00:11:22:33:66:00", "", "198.18.0.15"),
        HostEntry("cpe-b", None, "", None, "00:11:22:33:44:01"),
    ):
        assert parse_host_block(host_block(e)) == e


@pytest.mark.parametrize(
    ("body", "parts"),
    [
        ('filename "a;b"; x 1;', ['filename "a;b"', "x 1"]),
        (r'filename "a\";b"; y;', [r'filename "a\";b"', "y"]),
        (" ; ;a; ", ["a"]),
        ("", []),
    ],
)
def test_statements_split_outside_strings(body: str, parts: list[str]) -> None:
    assert split_statements(body) == parts


@pytest.mark.parametrize(
    "line",
    [
        'host a { filename "x; }',  # unterminated string
        "host a { filename x }",  # no ';'
        "host a b { hardware ethernet 00:11:22:33:44:55; }",
        "subnet 10.0.0.0 netmask 255.0.0.0 { }",
        "host a { hardware ethernet 00:11:22:33:44:55;",
    ],
)
def test_a_malformed_block_is_refused(line: str) -> None:
    with pytest.raises(HostSyntaxError):
        parse_host_block(line)


def test_a_name_twice_in_a_file_names_both_lines() -> None:
    text = host_block(cm(1)) + "\n# comment\n" + host_block(cm(1, "00:11:22:33:44:99"))
    with pytest.raises(HostSyntaxError, match=r"f line 4: host cm-1 already at line 1"):
        parse_host_file(text, "f")


MOVED = cm(3, "00:11:22:33:44:01")  # cm-3 takes cm-1's MAC


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ({}, {}, HostDelta()),
        (table(cm(1)), table(cm(1)), HostDelta()),
        ({}, table(cm(2), cm(1)), HostDelta(add=[cm(1), cm(2)])),
        (table(cm(1), cm(2)), table(cm(2)), HostDelta(delete=["cm-1"])),
        # a change in anything is delete + add: MAC, statements, fixed address
        (
            table(cm(1)),
            table(cm(1, "00:11:22:33:44:77")),
            HostDelta(["cm-1"], [cm(1, "00:11:22:33:44:77")]),
        ),
        (table(cm(1)), table(cm(1, stmts="x;")), HostDelta(["cm-1"], [cm(1, stmts="x;")])),
        (
            table(HostEntry("e", "00:11:22:33:44:55", "", "10.0.0.1")),
            table(HostEntry("e", "00:11:22:33:44:55", "", "10.0.0.2")),
            HostDelta(["e"], [HostEntry("e", "00:11:22:33:44:55", "", "10.0.0.2")]),
        ),
        # a MAC moving to a new name: the old name goes first
        (table(cm(1)), table(MOVED), HostDelta(["cm-1"], [MOVED])),
        # two names swapping MACs: both deleted before either is added
        (
            table(cm(1), cm(2)),
            table(cm(1, "00:11:22:33:44:02"), cm(2, "00:11:22:33:44:01")),
            HostDelta(["cm-1", "cm-2"], [cm(1, "00:11:22:33:44:02"), cm(2, "00:11:22:33:44:01")]),
        ),
        # OMAPI cannot add a host without a MAC; it can delete one
        (
            {},
            table(HostEntry("r", None, "", None, "00:11:22:33:44:01")),
            HostDelta(unsupported=["r"]),
        ),
        (table(HostEntry("r", None, "", None, "00:11:22:33:44:01")), {}, HostDelta(["r"])),
    ],
)
def test_delta(old: dict[str, HostEntry], new: dict[str, HostEntry], want: HostDelta) -> None:
    got = delta(old, new)
    assert got == want
    assert got.empty is (want == HostDelta())


def test_names_by_mac_lists_only_shared_macs() -> None:
    entries = [cm(1), cm(2, "00:11:22:33:44:01"), cm(3), HostEntry("r", None, "", None, "x")]
    assert names_by_mac(entries) == {"00:11:22:33:44:01": ["cm-1", "cm-2"]}
    upper = HostEntry("u", "00:11:22:33:44:03".upper(), "")
    assert names_by_mac([cm(3), upper]) == {"00:11:22:33:44:03": ["cm-3", "u"]}


# --- validation in O(change) (provhad.validate) ---------------------------------------------

VCFG = config.ValidateConfig()
needs_dhcpd = pytest.mark.skipif(not Path(VCFG.dhcpd).exists(), reason="needs dhcpd")


def definitions(tmp_path: Path) -> str:
    """The option definitions of the dhcpd.conf our templates render."""
    cfg = config.Config().with_root(str(tmp_path))
    rendered = Renderer(cfg).render(model.build(rows.small(), "slave"), FACTS)
    return validate.option_definitions(rendered.files[rendered.dhcpd_conf].data.decode())


def test_option_definitions_are_read_from_the_rendered_config(tmp_path: Path) -> None:
    text = definitions(tmp_path)
    assert "option space ccc;\n" in text
    assert "option ccc.SecondaryDHCPServer code 2 = ip-address;\n" in text
    assert "option ccc.provision-server code 3 = {unsigned integer 8, string};\n" in text
    assert "ntp-servers" not in text  # a use, not a definition


@needs_dhcpd
def test_valid_hosts_pass_and_each_bad_one_is_named(tmp_path: Path) -> None:
    defs = definitions(tmp_path)
    voip = HostEntry(
        "cm-9",
        "00:11:22:33:44:09",
        'filename "cm/cm-9.cfg"; ddns-hostname "cm-9"; option ccc.dhcp-server-1 10.0.0.1;'
        " option ccc.SecondaryDHCPServer 10.0.0.2;",
    )
    good = [cm(1), voip, HostEntry("cpe-a", "00:11:22:33:66:00", "", "198.18.0.15")]
    assert validate.check_hosts(good, VCFG, defs) == []
    # without the definitions the ccc option is unknown to dhcpd
    without = validate.check_hosts([voip], VCFG)
    assert without and all(p.message.startswith("host cm-9: ") for p in without), without
    assert "no option space named ccc" in without[0].message
    # what OMAPI would accept and silently drop: dhcpd -t names the host
    bad = cm(2, stmts='filename "cm/cm-2.cfg" ddns-hostname "cm-2";')
    problems = validate.check_hosts([cm(1), bad, cm(3)], VCFG, defs)
    assert problems and all(p.message.startswith("host cm-2: ") for p in problems), problems
    unknown = cm(4, stmts="option no-such-option 1;")
    assert validate.check_hosts([unknown], VCFG, defs)[0].message.startswith("host cm-4: ")


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (cm(1, stmts='filename "x"; } host evil { filename "y";'), "brace"),
        (cm(1, stmts='filename "x";\nfoo;'), "newline"),
        (cm(1, stmts='filename "x" # ;'), "comment"),
        (cm(1, stmts='filename "x;'), "unterminated string"),
        (cm(1, stmts="filename  x ;"), "canonical"),
        (HostEntry("a b", "00:11:22:33:44:55", ""), "plain name"),
        (HostEntry("a", "00:11:22:33:44", ""), "not a MAC"),
        (HostEntry("a", "00:11:22:33:44:55", "", "10.0.0.256"), "IPv4"),
        (HostEntry("a", None, ""), "neither"),
    ],
)
def test_a_badly_shaped_entry_never_reaches_dhcpd(entry: HostEntry, why: str) -> None:
    missing = dataclasses.replace(VCFG, dhcpd="/nonexistent/dhcpd")  # would fail if it ran
    problems = validate.check_hosts([entry], missing)
    assert len(problems) == 1 and why in problems[0].message, problems


def test_duplicates_names_twice_and_macs_under_two_names() -> None:
    entries = [cm(1), cm(2, "00:11:22:33:44:01"), cm(1, "00:11:22:33:44:aa"), cm(3)]
    assert [str(p) for p in validate.duplicates(entries)] == [
        "dhcpd: host name cm-1 is used twice",
        "dhcpd: hardware address 00:11:22:33:44:01 is used by hosts cm-1, cm-2",
    ]
    assert validate.duplicates([cm(1), cm(2)]) == []


@needs_dhcpd
def test_pieces_catch_what_no_single_piece_shows(tmp_path: Path) -> None:
    defs = definitions(tmp_path)
    entries = [cm(n, f"00:11:22:33:{n // 256:02x}:{n % 256:02x}") for n in range(25)]
    assert validate.check_hosts_in_pieces(entries, VCFG, defs, piece=10) == []
    entries[23] = cm(2, "00:11:22:33:00:17")  # same name as entries[2], another piece
    entries[17] = cm(17, stmts="nonsense here;")
    got = [p.message for p in validate.check_hosts_in_pieces(entries, VCFG, defs, piece=10)]
    assert got[0] == "host name cm-2 is used twice"
    assert len(got) >= 2 and all(m.startswith("host cm-17: ") for m in got[1:]), got


# --- the delta between two versions of the host files (what the supervisor sends) ----------


def rendered_host_files(snap: object) -> dict[str, bytes]:
    out = Renderer(config.Config()).render(model.build(snap, "slave"), FACTS)  # type: ignore[arg-type]
    return {
        p.rsplit("/", 1)[1]: f.data
        for p, f in out.files.items()
        if p.rsplit("/", 1)[1] in hosts.HOST_FILES
    }


def test_file_delta_of_a_change_an_insert_and_a_delete_replays_to_the_new_table() -> None:
    from provhad.hosts import file_delta

    snap = rows.small()
    before = rendered_host_files(snap)
    modems = list(snap.modem)
    changed = dict(modems[0]) | {"hostname": "cm-renamed"}
    new_modem = rows.modem(100500, "00:11:22:33:45:00")
    after = rendered_host_files(dataclasses.replace(snap, modem=[changed, *modems[2:], new_modem]))
    d = file_delta(before, after)
    assert str(modems[0]["hostname"]) in d.delete and str(modems[1]["hostname"]) in d.delete
    assert {e.name for e in d.add} == {"cm-renamed", "cm-100500"}
    table = dict(parse_host_file(before["modems-host.conf"].decode()))
    for name in d.delete:
        table.pop(name)
    table.update({e.name: e for e in d.add})
    assert table == parse_host_file(after["modems-host.conf"].decode())


def test_file_delta_parses_only_what_changed() -> None:
    from provhad.hosts import HostSyntaxError, file_delta

    same = b"host a { this is not parsed }\n"
    ok = b"host b { hardware ethernet 00:11:22:33:44:01; }\n"
    d = file_delta({"modems-host.conf": same}, {"modems-host.conf": same + ok})
    assert [e.name for e in d.add] == ["b"] and d.delete == []
    assert file_delta({"mta.conf": same}, {"mta.conf": same}).empty
    with pytest.raises(HostSyntaxError):
        file_delta({}, {"modems-host.conf": b'host c { unterminated "\n'})


def test_file_delta_moves_a_mac_by_delete_then_add() -> None:
    from provhad.hosts import file_delta

    old = {"modems-host.conf": b"host cm-1 { hardware ethernet 00:11:22:33:44:01; }\n"}
    new = {"modems-host.conf": b"host cm-2 { hardware ethernet 00:11:22:33:44:01; }\n"}
    d = file_delta(old, new)
    assert d.delete == ["cm-1"] and [e.name for e in d.add] == ["cm-2"]
    # a line moved between files unchanged is no step at all
    assert file_delta(old, {"endpoints-host.conf": old["modems-host.conf"]}).empty


# --- subclass members (blocked.conf, modems-clients-public.conf) ------------------------------

BLOCKED_HEAD = b"# All Modems (remote agent IDs) without internet access\n"


def sub(n: int, cm: int | None = None, cls: str = "blocked") -> bytes:
    sep = " " if cls == "blocked" else ""  # the two templates differ by this space
    return f'subclass "{cls}" 00:11:22:33:44:{n:02x}; # CM id:{sep}{cm or n}\n'.encode()


def member(n: int, cls: str = "blocked") -> Member:
    return Member(cls, f"00:11:22:33:44:{n:02x}")


@pytest.mark.parametrize(
    ("old", "new", "leave", "join"),
    [
        (sub(1) + sub(2), sub(2) + sub(3), [member(1)], [member(3)]),
        (sub(1), sub(1, cm=7), [], []),  # another modem id, the same member
        (sub(1) + sub(1, cm=7), sub(1, cm=7), [], []),  # two modems, one MAC: one left
        (sub(1, cm=7), sub(1) + sub(1, cm=7), [], []),  # already a member by another line
        (sub(1) + sub(1, cm=7), b"", [member(1)], []),
        (b"", b"".join(sub(n) for n in range(40)), [], [member(n) for n in range(40)]),
        (b"".join(sub(n) for n in range(40)), sub(5), [member(n) for n in range(40) if n != 5], []),
        # many leave at once (the whole file is scanned), one of them still held by another line
        (
            b"".join(sub(n) for n in range(40)) + sub(5, cm=99),
            sub(5, cm=99),
            [member(n) for n in range(40) if n != 5],
            [],
        ),
        (
            b"".join(sub(n) for n in range(40)),
            b"".join(sub(n, cm=n + 100) for n in range(40)),
            [],
            [],
        ),
    ],
)
def test_member_changes_follow_membership_not_lines(
    old: bytes, new: bytes, leave: list[Member], join: list[Member]
) -> None:
    files = ("blocked.conf", BLOCKED_HEAD + old), ("blocked.conf", BLOCKED_HEAD + new)
    assert changed_members(dict([files[0]]), dict([files[1]])) == (leave, join)


def test_file_delta_carries_hosts_and_members_together() -> None:
    public = "modems-clients-public.conf"
    old = {"modems-host.conf": b"", public: sub(1, cls="Client-Public")}
    new = {
        "modems-host.conf": host_block(HostEntry("cm-1", "00:11:22:33:44:01", "")).encode(),
        public: sub(2, cls="Client-Public"),
        "blocked.conf": sub(1),
    }
    change = file_delta(old, new)
    assert [e.name for e in change.add] == ["cm-1"] and not change.delete
    assert change.leave == [member(1, "Client-Public")]
    assert change.join == [member(2, "Client-Public"), member(1)]  # sorted by class
    assert len(change) == 4 and str(change.join[1]) == 'subclass "blocked" 00:11:22:33:44:01'


@pytest.mark.parametrize(
    "line",
    [
        b'subclass "blocked" 00:11:22:33:44:AA; # CM id: 1',  # upper case: not our template's
        b'subclass "blocked" "a-string";',
        b'subclass "blocked" 00:11:22:33:44:01 { dynamic; }',
        b'subclass "blocked" 00:11:22:33:44:01; next statement;',
    ],
)
def test_a_subclass_line_not_as_the_templates_write_it_is_refused(line: bytes) -> None:
    with pytest.raises(HostSyntaxError, match="not a one-line subclass"):
        changed_members({}, {"blocked.conf": line + b"\n"})


def test_the_templates_subclass_lines_are_read_back(tmp_path: Path) -> None:
    """Every member line blocked.conf.j2 and modems-clients-public.conf.j2 render is one
    changed_members reads (else the change would fall back to a restart)."""
    snap = rows.small()
    for r in snap.modem[:3]:
        r.update(public=1, internet_access=0)
    cfg = config.Config().with_root(str(tmp_path))
    m = model.build(snap, "slave")
    rendered = Renderer(cfg).render(m, FACTS)
    files = {
        name: rendered.files[f"{rendered.dhcp_dir}/{name}"].data for name in hosts.SUBCLASS_FILES
    }
    leave, join = changed_members({}, files)
    assert not leave and len(join) == len(m.blocked_modems) + len(m.public_modems) == 6
    assert {j.mac for j in join} == {r.mac for r in m.blocked_modems}
