"""Tests that kill mutants of provhad/config.py which the other tests let live."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import error, load


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[dhcpd]\ncheck_attempts = 101\n", "dhcpd.check_attempts: must be between 1 and 100"),
        ("[watch]\nmax_delay = 0\n", "watch.max_delay: must be greater than 0"),
        ("[dhcpd]\nrestart_command = []\n", "dhcpd.restart_command: must name a command"),
        ("[watch]\nmax_poll_share = 0\n", "watch.max_poll_share:"),
    ],
)
def test_values_out_of_range_name_their_key(tmp_path: Path, text: str, expect: str) -> None:
    assert error(tmp_path, text).startswith(f"{tmp_path / 'provhad.toml'}: {expect}")


def test_zero_is_allowed_where_it_means_off(tmp_path: Path) -> None:
    assert load(tmp_path, "[watch]\nquiet_period = 0\n").watch.quiet_period == 0.0
    w = load(tmp_path, "[watch]\nperiodic_command_quiet_period = 0\n").watch
    assert w.periodic_command_quiet_period == 0.0
