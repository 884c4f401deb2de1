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


EL_RELEASE = 'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="8.9"\n'
DEBIAN_RELEASE = 'ID=debian\nVERSION_ID="12"\n'


def install(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--root", str(root), "--venv-from", str(THIS_VENV), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )


def scratch_root(tmp_path: Path, release: str = EL_RELEASE) -> Path:
    """A root with the groups an NMS Prime slave has (named from bind) and an os-release."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("named:x:25:\nbind:x:105:\n")
    (root / "etc/os-release").write_text(release)
    return root


def ids(root: Path, db: str) -> dict[str, int]:
    lines = (root / "etc" / db).read_text().splitlines()
    return {ln.split(":")[0]: int(ln.split(":")[2]) for ln in lines}


def meta(root: Path, path: str) -> tuple[int, int, int]:
    st = (root / path.lstrip("/")).lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def installed_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_install_into_a_scratch_el_root(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    (root / "etc/chrony.d").mkdir()
    (root / "etc/chrony.d/nmsprime.conf").write_text("allow 172.20.0.0/22\n")
    proc = install(root)
    assert proc.returncode == 0, proc.stderr
    assert "platform el: dhcpd unit dhcpd.service, groups dhcpd and named" in proc.stderr
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
        "/etc/provhad/install.conf": (0, 0, 0o644),
        "/etc/dhcp-nmsprime": (uid, dhcpd, 0o2750),
        "/etc/dhcp-nmsprime/cmts_gws": (uid, dhcpd, 0o2750),
        "/etc/named-nmsprime.d": (uid, named, 0o2750),
        "/etc/chrony-nmsprime.d": (uid, gid, 0o755),
        "/var/lib/provhad": (uid, gid, 0o750),
        "/opt/provhad/venv/bin/provhad": (0, 0, 0o755),
        "/opt/provhad/doc/configuration.md": (0, 0, 0o644),
    }
    assert {path: meta(root, path) for path in expected} == expected
    assert (root / "etc/systemd/system/provhad.service").read_bytes() == (
        REPO / "systemd/provhad.service"
    ).read_bytes()
    # EL: the repository's rule and example are EL's, installed as they are (but the marker)
    assert (root / "etc/polkit-1/rules.d/50-provhad.rules").read_bytes() == (
        REPO / "systemd/50-provhad.rules"
    ).read_bytes()
    config = (root / "etc/provhad/provhad.toml").read_text()
    assert config == (REPO / "systemd/provhad.toml").read_text().replace(
        "# platform: el\n", "# platform: el (written by scripts/install-slave)\n"
    )
    assert not (root / "etc/default/isc-dhcp-server").exists()

    # the venv is a symlink to one of venvs/*; provhad is on PATH
    assert os.readlink(root / "opt/provhad/venv").startswith("venvs/")
    assert os.readlink(root / "usr/local/bin/provhad") == "/opt/provhad/venv/bin/provhad"

    # upstream's static chrony include moved into provhad's directory, a symlink in its place
    link = root / "etc/chrony.d/nmsprime.conf"
    assert os.readlink(link) == "/etc/chrony-nmsprime.d/nmsprime.conf"
    assert (root / "etc/chrony-nmsprime.d/nmsprime.conf").read_text() == "allow 172.20.0.0/22\n"

    # the installed command runs, and reads the installed configuration
    provhad = root / "opt/provhad/venv/bin/provhad"
    help_ = subprocess.run([provhad, "--help"], capture_output=True, text=True, check=False)
    assert help_.returncode == 0
    for command in ("render", "run", "status", "confirm-shrink", "trigger", "check"):
        assert command in help_.stdout
    checked = subprocess.run(
        [provhad, "check", "--config", root / "etc/provhad/provhad.toml", "--root", root],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 3, checked.stdout + checked.stderr
    assert checked.stdout.startswith("PROVHAD UNKNOWN - no state file ")


def test_install_into_a_scratch_debian_root(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, DEBIAN_RELEASE)
    (root / "etc/default").mkdir()
    (root / "etc/default/isc-dhcp-server").write_text(
        '#DHCPDv4_CONF=/etc/dhcp/dhcpd.conf\nINTERFACESv4=""\nINTERFACESv6=""\n'
    )
    proc = install(root, "--dhcpd-interfaces", "eth1 eth2")
    assert proc.returncode == 0, proc.stderr
    groups = ids(root, "group")
    assert meta(root, "/etc/named-nmsprime.d")[1:] == (groups["bind"], 0o2750)
    assert meta(root, "/etc/dhcp-nmsprime")[1:] == (groups["dhcpd"], 0o2750)
    config = (root / "etc/provhad/provhad.toml").read_text()
    assert 'restart_command = ["systemctl", "restart", "isc-dhcp-server.service"]' in config
    assert 'check_command = ["systemctl", "is-active", "--quiet", "isc-dhcp-server.service"]' in (
        config
    )
    assert 'chrony_reload_command = ["systemctl", "try-restart", "chrony.service"]' in config
    assert 'named_checkconf = "/usr/bin/named-checkconf"' in config
    assert "dhcpd.service" not in config and "chronyd.service" not in config
    assert "# platform: debian (written by scripts/install-slave)" in config
    rule = (root / "etc/polkit-1/rules.d/50-provhad.rules").read_text()
    assert '"isc-dhcp-server.service": ["restart", "try-restart"]' in rule
    assert '"dhcpd.service": [' not in rule
    assert (root / "etc/default/isc-dhcp-server").read_text() == (
        'DHCPDv4_CONF="/etc/dhcp-nmsprime/dhcpd.conf"\nINTERFACESv4="eth1 eth2"\nINTERFACESv6=""\n'
    )
    assert (root / "etc/default/isc-dhcp-server.provhad-orig").read_text().startswith("#DHCPDv4")
    # issue 12: every start of Debian's dhcpd unit strips OMAPI host records first
    dropin = (root / "etc/systemd/system/isc-dhcp-server.service.d/provhad.conf").read_text()
    assert "ExecStartPre=-/opt/provhad/venv/bin/provhad strip-hosts /var/lib/dhcpd" in dropin
    assert not (root / "etc/systemd/system/dhcpd.service.d").exists()
    # Debian's chronyd reads /etc/chrony/conf.d
    link = root / "etc/chrony/conf.d/nmsprime.conf"
    assert os.readlink(link) == "/etc/chrony-nmsprime.d/nmsprime.conf"
    assert not (root / "etc/chrony.d").exists()


def test_second_run_reuses_the_options_and_keeps_the_configuration(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, DEBIAN_RELEASE)
    first = install(root, "--dhcpd-group", "dhcp", "--dhcpd-interfaces", "eth1")
    assert first.returncode == 0, first.stderr
    config = root / "etc/provhad/provhad.toml"
    config.write_text('[provha]\nown_state = "slave"\n# edited by the operator\n')
    (root / "etc/provhad/provhad.toml.example").write_text("old example\n")
    defaults = root / "etc/default/isc-dhcp-server"
    venv = os.readlink(root / "opt/provhad/venv")

    proc = install(root)  # an upgrade: no options repeated
    assert proc.returncode == 0, proc.stderr
    assert "reusing the options of the last install" in proc.stderr
    assert "platform debian: dhcpd unit isc-dhcp-server.service, groups dhcp and bind" in (
        proc.stderr
    )
    assert "kept the existing /etc/provhad/provhad.toml" in proc.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert "isc-dhcp-server.service" in (root / "etc/provhad/provhad.toml.example").read_text()
    assert 'INTERFACESv4="eth1"' in defaults.read_text()
    assert "m provhad dhcp\n" in (root / "etc/sysusers.d/provhad.conf").read_text()
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert [ln.split(":")[0] for ln in passwd].count("provhad") == 1  # not created twice
    # the new venv is live, the previous one kept for going back
    assert os.readlink(root / "opt/provhad/venv") != venv
    assert len(list((root / "opt/provhad/venvs").iterdir())) == 2
    # a third run: only the live and the previous venv stay
    assert install(root).returncode == 0
    assert len(list((root / "opt/provhad/venvs").iterdir())) == 2

    # an option given again replaces the remembered one
    assert install(root, "--dhcpd-interfaces", "eth3").returncode == 0
    assert 'INTERFACESv4="eth3"' in defaults.read_text()
    assert "dhcpd_interfaces=eth3\n" in (root / "etc/provhad/install.conf").read_text()


def test_a_missing_named_group_fails_before_anything_is_installed(tmp_path: Path) -> None:
    """The reported bug: tmpfiles failed on group named (Debian: bind) after the venv, unit
    and polkit rule were installed."""
    root = scratch_root(tmp_path, DEBIAN_RELEASE)
    (root / "etc/group").write_text("named:x:25:\n")  # no bind: named is not installed
    proc = install(root)
    assert proc.returncode != 0
    assert "no group bind in " in proc.stderr and "apt-get install bind9" in proc.stderr
    assert installed_files(root) == ["etc/group", "etc/os-release"]


def test_a_failed_venv_build_installs_nothing(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()  # empty: pip finds nothing
    proc = subprocess.run(
        [str(SCRIPT), "--root", str(root), "--wheelhouse", str(wheels)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "pip could not install provhad" in proc.stderr, proc.stderr
    assert installed_files(root) == ["etc/group", "etc/os-release"]
    assert list((root / "opt/provhad/venvs").iterdir()) == []


def test_missing_build_prerequisites_are_named_up_front(tmp_path: Path) -> None:
    """Without a package manager's help (here: --root), the script names what the venv build
    needs and stops before it changes anything."""
    root = scratch_root(tmp_path, DEBIAN_RELEASE)
    bin_ = tmp_path / "bin"  # PATH without gcc and pkg-config
    bin_.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in Path(directory).iterdir():
            name = tool.name
            if name.startswith(("gcc", "pkg-config", "x86_64-linux-gnu-")):
                continue
            if not (bin_ / name).exists():
                (bin_ / name).symlink_to(tool)
    env = dict(os.environ, PATH=str(bin_))
    proc = subprocess.run(
        [str(SCRIPT), "--root", str(root), "--python", sys.executable],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert proc.returncode != 0
    assert (
        "building the venv needs: gcc libsystemd-dev pkg-config (apt-get install gcc libsystemd-dev"
        in (proc.stderr)
    ), proc.stderr
    assert installed_files(root) == ["etc/group", "etc/os-release"]


def test_groups_are_configurable(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    proc = install(root, "--dhcpd-group", "dhcp", "--named-group", "bind")
    assert proc.returncode == 0, proc.stderr
    groups = ids(root, "group")
    assert "m provhad dhcp\n" in (root / "etc/sysusers.d/provhad.conf").read_text()
    assert meta(root, "/etc/dhcp-nmsprime")[1:] == (groups["dhcp"], 0o2750)
    assert meta(root, "/etc/named-nmsprime.d")[1:] == (groups["bind"], 0o2750)
    assert "dhcpd" not in groups


def test_an_unknown_platform_must_be_named(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, "ID=arch\n")
    proc = install(root)
    assert proc.returncode != 0 and "unknown platform" in proc.stderr
    assert "--platform el|debian" in proc.stderr
    assert install(root, "--platform", "el").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--dhcpd-group", "a b"], "not a group name: a b"),
        (["--prefix", "opt"], "--prefix must be absolute"),
        (["--platform", "suse"], "--platform must be el or debian"),
        (["--dhcpd-unit", "dhcpd"], "not a service unit: dhcpd"),
        (["--platform", "el", "--dhcpd-interfaces", "eth1"], "on EL set them in dhcpd's unit"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    root = scratch_root(tmp_path)
    proc = install(root, *args)
    assert proc.returncode != 0 and message in proc.stderr
    assert installed_files(root) == ["etc/group", "etc/os-release"]  # nothing was installed
