"""Tests that kill mutants of provhad/model.py which the other tests let live."""

from __future__ import annotations

import dataclasses

from provhad import model
from tests import rows


def test_reserved_macs_in_any_case() -> None:
    assert model.reserved_mac("FF:FF:FF:FF:FF:FF") and model.reserved_mac("Ff:00:00:00:00:00")


def test_boundaries_of_netmask_integer_and_load_ratio() -> None:
    assert model.netmask("/32") == 32
    assert model.integer(0, "dhcp_def_lease_time") == 0
    snap = dataclasses.replace(rows.small(), provha=[rows.provha(load_ratio_master=0)])
    assert model.build(snap, "master").ha.split == 0


def test_cut_ranges_keeps_a_single_last_address() -> None:
    assert model.cut_ranges(10, 20, [19]) == [(10, 18), (20, 20)]


def with_pools(*extra: dict[str, object]) -> model.Model:
    snap = rows.small()
    return model.build(dataclasses.replace(snap, ippool=[*snap.ippool, *extra]), "slave")


def test_a_one_address_pool_is_fine_and_touching_pools_overlap() -> None:
    one = rows.pool(9, 2, "CM", "10.1.0.0", "/24", "10.1.0.5", "10.1.0.5", "10.1.0.1")
    touch = rows.pool(10, 2, "CM", "10.1.0.0", "/24", "10.1.0.2", "10.1.0.5", "10.1.0.1")
    m = with_pools(one, touch)
    assert 9 in {p.id for p in m.pools}
    assert any(
        r.table == "ippool" and r.id == 10 and r.reason.startswith("range overlaps ippool id 9")
        for r in m.rejects
    )


def test_a_one_address_pool_is_not_reported_as_reversed() -> None:
    one = rows.pool(9, 2, "CM", "10.1.0.0", "/24", "10.1.0.5", "10.1.0.5", "10.1.0.1")
    m = with_pools(one)
    assert 9 in {p.id for p in m.pools} and not [r for r in m.rejects if r.id == 9]


def test_a_range_ending_outside_its_subnet_is_rejected() -> None:
    bad = rows.pool(9, 2, "CM", "10.1.0.0", "/24", "10.1.0.5", "10.1.1.5", "10.1.0.1")
    assert [r.id for r in with_pools(bad).rejects] == [9]


def endpoint(eid: int, hostname: str, fixed: int, ip: str | None) -> dict[str, object]:
    return {
        "id": eid,
        "hostname": hostname,
        "mac": "00:11:22:33:77:00",
        "fixed_ip": fixed,
        "ip": ip,
        "modemmac": "00:11:22:33:44:00",
    }


def test_endpoints_fixed_addresses_and_case_sensitive_names() -> None:
    """dhcpd's host names are case-sensitive (`host X` beside `host x` is accepted), so is
    the model's namespace; the same name twice is refused."""
    snap = rows.small()
    extra = [
        endpoint(200010, "cpe-c", 0, "198.18.0.40"),
        endpoint(200011, "CPE-A", 1, None),
        endpoint(200012, "cpe-c", 1, None),
    ]
    m = model.build(dataclasses.replace(snap, endpoint=[*snap.endpoint, *extra]), "slave")
    c = next(e for e in m.endpoints if e.id == 200010)
    assert c.fixed_ip is None
    assert [r.id for r in m.rejects if r.table == "endpoint"] == [200012]


def test_a_modem_without_internet_access_is_blocked() -> None:
    m = model.build(rows.small(), "slave")
    assert [b.id for b in m.blocked_modems] == [100002]
