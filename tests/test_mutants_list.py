"""The mutant list of scripts/mutate stays true to the code: every snippet occurs exactly once
in its file and every module has tests (else a mutant would silently change nothing)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutant_applies_to_the_code_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(ROOT / "scripts" / "mutate")
    loader = importlib.machinery.SourceFileLoader("mutate", path)
    spec = importlib.util.spec_from_loader("mutate", loader)
    assert spec is not None
    mutate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutate", mutate)  # its dataclass looks itself up
    loader.exec_module(mutate)
    tests, mutants = mutate.load()  # raises ValueError naming the mutant that does not apply
    assert len(mutants) >= 120
    for module, args in tests.items():
        assert [m for m in mutants if m.module == module], module
        assert all((ROOT / a.split("::")[0]).is_file() for a in args), module
