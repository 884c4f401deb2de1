"""Tests that kill mutants of provhad/config.py which the other tests let live."""

from __future__ import annotations
