"""Tests that kill mutants of provhad/delta.py which tests/test_delta.py lets live."""

from __future__ import annotations

import pytest

from provhad.delta import Host, NotLive, delta, file_delta, parse

MODEM = b"host cm-1 { hardware ethernet 00:11:22:33:44:01; }"


def test_an_escaped_quote_does_not_end_the_string() -> None:
    h = parse(b'host x { hardware ethernet 00:11:22:33:44:01; filename "a\\";b"; }')
    assert h.statements == 'filename "a\\";b";'


def test_a_trailing_statement_without_its_semicolon_is_not_live() -> None:
    with pytest.raises(NotLive, match="unterminated"):
        parse(b"host x { hardware ethernet 00:11:22:33:44:01; next-server 10.0.0.1 }")


def test_a_host_without_hardware_address_is_not_live() -> None:
    with pytest.raises(NotLive, match="no hardware ethernet"):
        parse(b"host x { fixed-address 10.0.0.5; }")


def test_mta_lines_go_live() -> None:
    old = {"mta.conf": b"host mta-1 { hardware ethernet 00:11:22:33:44:0a; }\n"}
    new = {"mta.conf": b"host mta-2 { hardware ethernet 00:11:22:33:44:0b; }\n"}
    d = delta(old, new)
    assert d.delete == ["mta-1"] and d.add == [Host("mta-2", "00:11:22:33:44:0b", None, "")]


def test_headers_and_comments_are_not_hosts() -> None:
    old = {"modems-host.conf": b"# generated at 10:00\n" + MODEM + b"\n"}
    new = {"modems-host.conf": b"# generated at 10:05\n\n" + MODEM + b"\n"}
    assert len(delta(old, new)) == 0


def test_one_of_two_equal_lines_removed_is_a_change() -> None:
    assert file_delta(MODEM + b"\n" + MODEM, MODEM) == ([MODEM], [])


def test_a_changed_host_is_deleted_then_added() -> None:
    old = {"modems-host.conf": MODEM + b"\n"}
    new = {"modems-host.conf": MODEM.replace(b"; }", b'; filename "cm/cm-1.cfg"; }') + b"\n"}
    d = delta(old, new)
    assert d.delete == ["cm-1"]
    assert d.add == [Host("cm-1", "00:11:22:33:44:01", None, 'filename "cm/cm-1.cfg";')]


def test_a_host_name_added_twice_is_not_live() -> None:
    twice = (
        b"host a { hardware ethernet 00:11:22:33:44:01; }\n"
        b"host a { hardware ethernet 00:11:22:33:44:02; }\n"
    )
    with pytest.raises(NotLive, match="host name a added twice"):
        delta({}, {"modems-host.conf": twice})
