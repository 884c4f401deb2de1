"""Tests that kill mutants of provhad/plan.py which the other tests let live."""

from __future__ import annotations

from provhad.plan import Plan
from provhad.render import DHCPD


def test_a_plan_that_only_removes_a_cmts_file_is_dhcpds_work() -> None:
    plan = Plan(write=(), remove=("/etc/dhcp-nmsprime/cmts_gws/7.conf",), unchanged=())
    assert not plan.empty and plan.services() == {DHCPD}
