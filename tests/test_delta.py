"""The host delta between two versions of the host files (provhad.delta), on lines as the real
templates render them."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from provhad import config, model
from provhad.delta import HOST_FILES, Host, NotLive, delta, file_delta, parse
from provhad.render import HostFacts, Renderer
from tests import rows

FACTS = HostFacts(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "nmsslave.nmsprime.test", None)


def host_files(snap: object) -> dict[str, bytes]:
    out = Renderer(config.Config()).render(model.build(snap, "slave"), FACTS)  # type: ignore[arg-type]
    return {
        p.rsplit("/", 1)[1]: f.data
        for p, f in out.files.items()
        if p.rsplit("/", 1)[1] in HOST_FILES
    }


def test_every_rendered_host_line_parses_back() -> None:
    files = host_files(rows.small())
    lines = [ln for data in files.values() for ln in data.split(b"\n") if ln.startswith(b"host ")]
    assert lines
    for ln in lines:
        try:
            h = parse(ln)
        except NotLive as exc:
            assert b"host-identifier" in ln, exc
            continue
        assert h.name in ln.decode() and h.mac in ln.decode()
        assert "hardware ethernet" not in h.statements and "fixed-address" not in h.statements


def test_modem_line() -> None:
    h = parse(
        b'host cm-1 { hardware ethernet 00:11:22:33:44:01; filename "cm/cm-1.cfg";'
        b' ddns-hostname "cm-1"; option ccc.dhcp-server-1 10.0.0.1;}'
    )
    assert h == Host(
        "cm-1",
        "00:11:22:33:44:01",
        None,
        'filename "cm/cm-1.cfg"; ddns-hostname "cm-1"; option ccc.dhcp-server-1 10.0.0.1;',
    )


def test_endpoint_with_fixed_address_and_one_without_mac() -> None:
    h = parse(b"host pc-1 { hardware ethernet 00:11:22:33:44:aa ; fixed-address 10.1.0.5; }")
    assert (h.mac, h.fixed_address, h.statements) == ("00:11:22:33:44:aa", "10.1.0.5", "")
    with pytest.raises(NotLive, match="host-identifier"):
        parse(b"host pc-2 { host-identifier option agent.remote-id 00:11:22:33:44:01 ; }")


def test_quoted_semicolons_stay_inside_their_statement() -> None:
    h = parse(b'host x { hardware ethernet 00:11:22:33:44:01; filename "a;b"; }')
    assert h.statements == 'filename "a;b";'
    with pytest.raises(NotLive):
        parse(b'host x { hardware ethernet 00:11:22:33:44:01; filename "a; }')


def test_delta_of_a_change_an_insert_and_a_delete() -> None:
    snap = rows.small()
    before = host_files(snap)
    modems = list(snap.modem)
    changed = dict(modems[0]) | {"public": 1 - int(modems[0]["public"] or 0)}
    new_modem = rows.modem(100500, "00:11:22:33:45:00")
    after = host_files(dataclasses.replace(snap, modem=[changed, *modems[2:], new_modem]))
    d = delta(before, after)
    gone = str(modems[1]["hostname"])
    assert gone in d.delete and "cm-100500" in [h.name for h in d.add]
    assert all(name in before["modems-host.conf"].decode() for name in d.delete)
    # applied in order (deletes, then adds) to the old file's hosts, we get the new file's
    hosts = {parse(ln).name: parse(ln) for ln in before["modems-host.conf"].split(b"\n") if ln}
    for name in d.delete:
        hosts.pop(name, None)
    hosts.update({h.name: h for h in d.add})
    want = {parse(ln).name: parse(ln) for ln in after["modems-host.conf"].split(b"\n") if ln}
    assert hosts == want


def test_nothing_changed_is_an_empty_delta() -> None:
    files = host_files(rows.small())
    assert len(delta(files, files)) == 0


def test_a_mac_moving_to_a_new_name_deletes_the_old_name_first() -> None:
    old = {"modems-host.conf": b"host cm-1 { hardware ethernet 00:11:22:33:44:01; }\n"}
    new = {"modems-host.conf": b"host cm-2 { hardware ethernet 00:11:22:33:44:01; }\n"}
    d = delta(old, new)
    assert d.delete == ["cm-1"] and [h.name for h in d.add] == ["cm-2"]


def test_duplicates_and_other_files_are_not_live() -> None:
    twice = (
        b"host a { hardware ethernet 00:11:22:33:44:01; }\n"
        b"host b { hardware ethernet 00:11:22:33:44:01; }\n"
    )
    with pytest.raises(NotLive, match="hardware address"):
        delta({}, {"modems-host.conf": twice})
    with pytest.raises(NotLive, match="not a host file"):
        delta({"blocked.conf": b""}, {"blocked.conf": b"x"})


def test_file_delta_is_a_multiset_difference() -> None:
    a = b"host a { }\nhost b { }\nhost b { }\n"
    b = b"host b { }\nhost c { }\n"
    assert file_delta(a, b) == ([b"host a { }", b"host b { }"], [b"host c { }"])
