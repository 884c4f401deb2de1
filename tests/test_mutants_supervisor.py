"""Tests that kill mutants of provhad/supervisor.py which the other tests let live."""

from __future__ import annotations
