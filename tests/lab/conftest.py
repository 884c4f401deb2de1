"""Fixtures of the HA lab: namespaces, the lab database, both nodes; all torn down on failure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from provhad.testbed import MariaDB
from tests.lab.ha import GI_CM, GI_CPE, GI_MTA, GI_PUB, HALab, configfiles, seed
from tests.lab.netlab import Topology, netns_unavailable, overlay_unavailable

MODEMS, MTAS = 16, 6


def _missing() -> str | None:
    why = netns_unavailable() or overlay_unavailable()
    if why:
        return why
    for prog in ("dhcpd", "in.tftpd"):
        if shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"the HA lab needs {prog}"
    try:
        import scapy  # noqa: F401
    except ImportError:
        return "the HA lab needs scapy (the test extra)"
    return None


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """master, slave and cmts namespaces on a bridge; skips when that is impossible."""
    why = _missing()
    if why:
        pytest.skip(why)
    net = Topology(relay_addresses=[GI_CM, GI_CPE, GI_MTA, GI_PUB])
    try:
        net.create()
        yield net
    finally:
        net.destroy()


@pytest.fixture(scope="module")
def halab(
    topology: Topology, mariadb: MariaDB, schema_sql: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HALab]:
    """The lab database, the master's dhcpd, the slave's provhad (with its dhcpd) and tftpd."""
    with mariadb.scratch(schema_sql, prefix="halab") as db:
        lab = HALab(tmp_path_factory.mktemp("halab"), topology, db)
        tftpd = None
        try:
            lab.clients = seed(db, MODEMS, MTAS)
            for root in (lab.master_root, lab.slave_root):
                configfiles(root, lab.clients)
            lab.render_master()
            tftpd = lab.start_tftpd()
            lab.start_daemon()
            yield lab
        finally:
            lab.stop()
            if tftpd is not None:
                tftpd.kill()
                tftpd.wait()
