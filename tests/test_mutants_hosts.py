"""Tests that kill mutants of provhad/hosts.py's host delta (tests/mutation/mutants.toml) the
module tests let live."""

from __future__ import annotations

import pytest

from provhad.hosts import HostSyntaxError, file_delta, parse_host_block

MAC1 = "00:11:22:33:44:01"


def test_one_of_two_equal_lines_removed_is_a_change() -> None:
    line = f"host a {{ hardware ethernet {MAC1}; }}\n".encode()
    d = file_delta({"modems-host.conf": line * 2}, {"modems-host.conf": line})
    assert d.delete == ["a"]


def test_headers_and_comments_are_not_hosts() -> None:
    old = {"modems-host.conf": b"# a header that changed\n"}
    new = {"modems-host.conf": b"# another header\n"}
    assert file_delta(old, new).empty


def test_a_host_name_added_twice_is_refused() -> None:
    twice = f"host a {{ hardware ethernet {MAC1}; }}\nhost a {{ }}\n".encode()
    with pytest.raises(HostSyntaxError, match="twice"):
        file_delta({}, {"modems-host.conf": twice})


def test_a_changed_host_is_deleted_then_added_and_an_unchanged_one_not_sent() -> None:
    keep = f"host k {{ hardware ethernet {MAC1}; }}\n".encode()
    old = keep + b'host a { hardware ethernet 00:11:22:33:44:02; filename "x"; }\n'
    new = keep + b'host a { hardware ethernet 00:11:22:33:44:02; filename "y"; }\n'
    d = file_delta({"modems-host.conf": old}, {"modems-host.conf": new})
    assert d.delete == ["a"] and [e.name for e in d.add] == ["a"]
    assert d.add[0].statements == 'filename "y";'


def test_a_host_known_by_remote_id_is_not_sent() -> None:
    line = b"host pc { host-identifier option agent.remote-id 00:11:22:33:44:01; }\n"
    d = file_delta({}, {"endpoints-host.conf": line})
    assert d.add == [] and d.unsupported == ["pc"]


def test_quotes_keep_their_semicolons_and_must_end() -> None:
    e = parse_host_block(f'host a {{ hardware ethernet {MAC1}; filename "a;b"; }}')
    assert e.statements == 'filename "a;b";'
    with pytest.raises(HostSyntaxError):
        parse_host_block(f'host a {{ hardware ethernet {MAC1}; filename "a; }}')


def test_fixed_address_is_its_own_attribute() -> None:
    e = parse_host_block(f"host a {{ hardware ethernet {MAC1}; fixed-address 10.0.0.5; }}")
    assert (e.fixed_address, e.statements) == ("10.0.0.5", "")


def test_the_delta_goes_from_old_to_new() -> None:
    line = f"host a {{ hardware ethernet {MAC1}; }}\n".encode()
    d = file_delta({}, {"modems-host.conf": line})
    assert d.delete == [] and [e.name for e in d.add] == ["a"]
