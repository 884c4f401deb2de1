"""scripts/install-slave into a scratch root: files, owners, modes, and a working provhad."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts/install-slave"
# the venv running these tests has provhad installed: the installed venv is layered on it
THIS_VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed (Debian package systemd)",
)


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--root", str(root), "--venv-from", str(THIS_VENV), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def scratch_root(tmp_path: Path) -> Path:
    """A root with the groups an NMS Prime slave has (named from bind)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("named:x:25:\nbind:x:105:\n")
    return root


def ids(root: Path, db: str) -> dict[str, int]:
    lines = (root / "etc" / db).read_text().splitlines()
    return {ln.split(":")[0]: int(ln.split(":")[2]) for ln in lines}


def meta(root: Path, path: str) -> tuple[int, int, int]:
    st = (root / path.lstrip("/")).lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_install_into_a_scratch_root(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    (root / "etc/chrony.d").mkdir()
    (root / "etc/chrony.d/nmsprime.conf").write_text("allow 172.20.0.0/22\n")
    proc = install(root)
    assert proc.returncode == 0, proc.stderr
    assert "installed provhad " in proc.stderr

    users, groups = ids(root, "passwd"), ids(root, "group")
    uid, gid, dhcpd, named = users["provhad"], groups["provhad"], groups["dhcpd"], groups["named"]
    group_lines = (root / "etc/group").read_text().splitlines()
    assert any(ln.startswith("dhcpd:") and ln.endswith(":provhad") for ln in group_lines)
    expected = {
        "/etc/systemd/system/provhad.service": (0, 0, 0o644),
        "/etc/sysusers.d/provhad.conf": (0, 0, 0o644),
        "/etc/tmpfiles.d/provhad.conf": (0, 0, 0o644),
        "/etc/polkit-1/rules.d/50-provhad.rules": (0, 0, 0o644),
        "/etc/provhad": (0, gid, 0o750),
        "/etc/provhad/provhad.toml": (0, gid, 0o640),  # the database password
        "/etc/provhad/provhad.toml.example": (0, gid, 0o640),
        "/etc/dhcp-nmsprime": (uid, dhcpd, 0o2750),
        "/etc/dhcp-nmsprime/cmts_gws": (uid, dhcpd, 0o2750),
        "/etc/named-nmsprime.d": (uid, named, 0o2750),
        "/etc/chrony-nmsprime.d": (uid, gid, 0o755),
        "/var/lib/provhad": (uid, gid, 0o750),
        "/opt/provhad/venv/bin/provhad": (0, 0, 0o755),
        "/opt/provhad/doc/configuration.md": (0, 0, 0o644),
    }
    assert {path: meta(root, path) for path in expected} == expected
    for name in ("provhad.service", "50-provhad.rules"):
        installed = root / (
            "etc/systemd/system" if name.endswith("service") else "etc/polkit-1/rules.d"
        )
        assert (installed / name).read_bytes() == (REPO / "systemd" / name).read_bytes()
    assert (root / "etc/provhad/provhad.toml").read_bytes() == (
        REPO / "systemd/provhad.toml"
    ).read_bytes()

    # upstream's static chrony include moved into provhad's directory, a symlink in its place
    link = root / "etc/chrony.d/nmsprime.conf"
    assert os.readlink(link) == "/etc/chrony-nmsprime.d/nmsprime.conf"
    assert (root / "etc/chrony-nmsprime.d/nmsprime.conf").read_text() == "allow 172.20.0.0/22\n"

    # the installed command runs, and reads the installed example configuration
    provhad = root / "opt/provhad/venv/bin/provhad"
    help_ = subprocess.run([provhad, "--help"], capture_output=True, text=True, check=False)
    assert help_.returncode == 0
    for command in ("render", "run", "status", "confirm-shrink", "trigger", "check"):
        assert command in help_.stdout
    config = root / "etc/provhad/provhad.toml"
    checked = subprocess.run(
        [provhad, "check", "--config", config, "--root", root],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 3, checked.stdout + checked.stderr
    assert checked.stdout.startswith("PROVHAD UNKNOWN - no state file ")


def test_second_run_keeps_the_configuration(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    assert install(root).returncode == 0
    config = root / "etc/provhad/provhad.toml"
    config.write_text('[provha]\nown_state = "slave"\n# edited by the operator\n')
    (root / "etc/provhad/provhad.toml.example").write_text("old example\n")
    proc = install(root)
    assert proc.returncode == 0, proc.stderr
    assert "kept the existing /etc/provhad/provhad.toml" in proc.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert (root / "etc/provhad/provhad.toml.example").read_bytes() == (
        REPO / "systemd/provhad.toml"
    ).read_bytes()
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert [ln.split(":")[0] for ln in passwd].count("provhad") == 1  # not created twice


def test_groups_are_configurable(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    proc = install(root, "--dhcpd-group", "dhcp", "--named-group", "bind")
    assert proc.returncode == 0, proc.stderr
    groups = ids(root, "group")
    assert "m provhad dhcp\n" in (root / "etc/sysusers.d/provhad.conf").read_text()
    assert meta(root, "/etc/dhcp-nmsprime")[1:] == (groups["dhcp"], 0o2750)
    assert meta(root, "/etc/named-nmsprime.d")[1:] == (groups["bind"], 0o2750)
    assert "dhcpd" not in groups


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--dhcpd-group", "a b"], "not a group name: a b"),
        (["--prefix", "opt"], "--prefix must be absolute"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = install(tmp_path / "root", *args)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "root/etc").exists()  # nothing was installed
