"""Shared fixtures: throwaway MariaDB / Mosquitto servers (the logic is in provhad.testbed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad.testbed import MariaDB, Mosquitto, ScratchDatabase
from tests.daemon_lab import DaemonLab
from tests.test_cli_render import seed_small

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def schema_sql() -> Path:
    """The NMS Prime schema (an exact copy of the real tables; never edit its columns)."""
    return FIXTURES / "schema.sql"


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One server for the whole session; tests get their own databases from ``nmsdb``."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


@pytest.fixture
def nmsdb(mariadb: MariaDB, schema_sql: Path) -> Iterator[ScratchDatabase]:
    """A fresh database with the NMS Prime schema and a SELECT-only user, dropped afterwards."""
    with mariadb.scratch(schema_sql) as db:
        yield db


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def lab(tmp_path: Path, nmsdb: ScratchDatabase) -> Iterator[DaemonLab]:
    """A `provhad run` process against the small seeded network (killed if a test left it)."""
    seed_small(nmsdb)
    lab = DaemonLab(tmp_path, nmsdb)
    yield lab
    if lab.proc is not None and lab.proc.poll() is None:
        lab.proc.kill()
        lab.proc.wait()
