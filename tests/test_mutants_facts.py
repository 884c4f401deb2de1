"""Tests that kill mutants of provhad/facts.py which the other tests let live."""

from __future__ import annotations
