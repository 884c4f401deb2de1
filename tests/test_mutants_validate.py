"""Tests that kill mutants of provhad/validate.py which the other tests let live."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from provhad import validate


def test_a_missing_or_hung_validator_fails() -> None:
    assert validate._run(["/nonexistent/dhcpd", "-t"], 5.0)[0] == 127
    # its own bound, not the operator's: sleep never answers within it
    assert validate._run(["sleep", "5"], 0.2)[0] == 124


def test_validator_output_names_the_live_paths() -> None:
    staged = cast(Any, SimpleNamespace(paths={"/etc/named.conf": "/etc/.named.conf.provhad-new"}))
    text = validate._clean("/etc/.named.conf.provhad-new:3: bad\n", staged)
    assert text == "/etc/named.conf:3: bad"
