"""Rendered files: golden copies per file type and role, and the line shapes of nmsprime.md.

Regenerate the golden copies after a deliberate format change with
``PROVHAD_UPDATE_GOLDEN=1 pytest tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import pytest

from provhad import config, model, validate
from provhad.render import (
    HostFacts,
    OmapiKey,
    Renderer,
    blame,
    declared_as,
    host_declaration,
    provision_server,
    quote,
    vivso_tftp,
)
from tests import rows

GOLDEN = Path(__file__).parent / "golden"
ROOT = "/srv/slave-root"
FACTS = HostFacts(
    now=dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC),
    fqdn="nmsslave.nmsprime.test",
    omapi=OmapiKey("my_omapi_key", "b21hcGlzZWNyZXRvbWFwaXNlY3JldA=="),
    network_access=frozenset({"cm-100000"}),
)


def render(role: str, **render_cfg: Any) -> dict[str, str]:
    cfg = config.Config(own_state=role).with_root(ROOT)
    if render_cfg:
        cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, **render_cfg))
    m = model.build(rows.small(), role)
    out = Renderer(cfg).render(m, FACTS)
    return {p.removeprefix(ROOT + "/"): f.data.decode() for p, f in out.files.items()}


@pytest.mark.parametrize("role", ["slave", "master"])
def test_golden(role: str) -> None:
    files = render(role)
    base = GOLDEN / role
    if os.environ.get("PROVHAD_UPDATE_GOLDEN"):
        for rel, text in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(text)
    expected = {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}
    assert set(files) == expected
    for rel, text in files.items():
        assert text == (base / rel).read_text(), rel


def test_line_shapes_from_upstream() -> None:
    f = render("slave")
    assert (
        'host cm-100000 { hardware ethernet 00:11:22:33:44:00; filename "cm/cm-100000.cfg"; '
        'ddns-hostname "cm-100000";}\n'
    ) in f["etc/dhcp-nmsprime/modems-host.conf"]
    # HA slave: own first, the master second, for modems with an MTA
    assert (
        'ddns-hostname "cm-100001"; option ccc.dhcp-server-1 172.20.0.2; '
        "option ccc.SecondaryDHCPServer 172.20.0.1;}\n"
    ) in f["etc/dhcp-nmsprime/modems-host.conf"]
    assert f["etc/dhcp-nmsprime/modems-clients-public.conf"] == (
        'subclass "Client-Public" 00:11:22:33:44:00; # CM id:100000\n'
    )
    assert f["etc/dhcp-nmsprime/mta.conf"] == (
        'host mta-300000 { hardware ethernet 00:11:22:33:55:01; filename "mta/mta-300000.cfg"; '
        'ddns-hostname "mta-300000"; option host-name "300000"; }\n'
    )
    assert f["etc/dhcp-nmsprime/endpoints-host.conf"] == (
        "host cpe-a { hardware ethernet 00:11:22:33:66:00 ; fixed-address 198.18.0.15; }\n"
        "host cpe-b { host-identifier option agent.remote-id 00:11:22:33:44:01 ; }\n"
    )
    assert f["etc/dhcp-nmsprime/blocked.conf"] == (
        "# All Modems (remote agent IDs) without internet access\n"
        'subclass "blocked" 00:11:22:33:44:02; # CM id: 100002\n'
    )
    g = f["etc/dhcp-nmsprime/global.conf"]
    for line in [
        "option domain-name-servers 172.20.0.2,172.20.0.1;",
        "next-server 172.20.0.2;",
        "option vivso 00:00:11:8b:0a:02:08:ac:14:00:02:ac:14:00:01;",
        "option log-servers 172.20.0.2,172.20.0.1;",
        "option time-servers 172.20.0.2,172.20.0.1;",
        "option time-offset 3600;",
        'option ccc.provision-server 0 "\\010nmsslave\\010nmsprime\\004test\\000";',
        "zone mta.nmsprime.test {\n\tprimary 172.20.0.1;",
    ]:
        assert line in g, line


def test_cmts_file_shapes() -> None:
    f = render("slave")
    one = f["etc/dhcp-nmsprime/cmts_gws/1.conf"]
    assert one.startswith(
        'shared-network "cmts-01"\n{\n\n\tsubnet 10.0.0.0 netmask 255.255.224.0\n'
    )
    # the pool names the pair: the slave serves own-then-peer (issue 11 item 9)
    assert "\t\toption domain-name-servers 172.20.0.2, 172.20.0.1 ;\n" in one
    assert "\t\t\trange 198.18.0.10 198.18.0.14;\n\t\t\trange 198.18.0.16 198.18.0.20;\n" in one
    assert one.count('failover peer "dhcpd-failover";') == 4
    assert "\tsubnet 100.64.0.0 netmask 255.255.255.0\n" in one  # '/24' converted
    assert '\n\n\t\toption domain-name "voip.example";\n\t}\n' in one  # upstream's indent
    two = f["etc/dhcp-nmsprime/cmts_gws/2.conf"]
    assert "\t\t\tdeny all clients;\n" in two and "allow members" not in two
    assert f["etc/dhcp-nmsprime/cmts_gws.conf"] == (
        f'include "{ROOT}/etc/dhcp-nmsprime/cmts_gws/1.conf";\n'
        f'include "{ROOT}/etc/dhcp-nmsprime/cmts_gws/2.conf";\n'
    )


def test_failover_per_role() -> None:
    slave = render("slave")["etc/dhcp-nmsprime/failover.conf"]
    master = render("master")["etc/dhcp-nmsprime/failover.conf"]
    assert "\tsecondary;\n\taddress 172.20.0.2;" in slave and "\tpeer address 172.20.0.1;" in slave
    assert "mclt" not in slave and "split" not in slave
    assert "\tprimary;\n\taddress 172.20.0.1;" in master
    assert "\tmclt 1800;\n\tsplit 128;\n" in master
    for text in (slave, master):
        assert "omapi-key my_omapi_key;\nomapi-port 7911;" in text


def test_dns_passwords_per_role() -> None:
    slave, master = render("slave"), render("master")
    assert f"secret {rows.SLAVE_PW};" in slave["etc/dhcp-nmsprime/dhcpd.conf"]
    assert f'secret "{rows.SLAVE_PW}";' in slave["etc/named-nmsprime.d/dhcpupdate.key"]
    assert f"secret {rows.MASTER_PW};" in master["etc/dhcp-nmsprime/dhcpd.conf"]
    ddns = slave["etc/dhcp-nmsprime/named-ddns.sh"]
    assert f"update 127.0.0.1 '{rows.SLAVE_PW}'" in ddns
    assert f"update 172.20.0.1 '{rows.MASTER_PW}'" in ddns


def test_ignore_cpe_lists_modems_with_network_access() -> None:
    plain = render("slave")["etc/dhcp-nmsprime/ignore-cpe.conf"]
    assert plain == "# Ignoring no devices – multiple_provisioning_systems not set in ProvBase\n"  # noqa: RUF001


def test_mta_include_follows_provvoip() -> None:
    assert (
        'include "/srv/slave-root/etc/dhcp-nmsprime/mta.conf";'
        in render("slave")["etc/dhcp-nmsprime/dhcpd.conf"]
    )
    off = render("slave", provvoip=False)
    assert (
        '#include "/srv/slave-root/etc/dhcp-nmsprime/mta.conf";'
        in off["etc/dhcp-nmsprime/dhcpd.conf"]
    )
    assert "ccc.dhcp-server-1 172.20.0.2" not in off["etc/dhcp-nmsprime/modems-host.conf"]


def test_time_offset_follows_dst() -> None:
    cfg = config.Config().with_root(ROOT)
    m = model.build(rows.small(), "slave")
    summer = HostFacts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC), "a.b", None)
    text = Renderer(cfg).render(m, summer).files[f"{ROOT}/etc/dhcp-nmsprime/global.conf"].data
    assert b"option time-offset 7200;" in text


def test_template_override_wins(tmp_path: Path) -> None:
    cfg = config.Config().with_root(tmp_path)
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "log.conf.j2").write_text("# site log.conf for {{ base.domain_name }}\n")
    out = Renderer(cfg).render(model.build(rows.small(), "slave"), FACTS)
    assert (
        out.files[f"{tmp_path}/etc/dhcp-nmsprime/log.conf"].data
        == b"# site log.conf for nmsprime.test\n"
    )


def test_strict_undefined(tmp_path: Path) -> None:
    import jinja2

    cfg = config.Config().with_root(tmp_path)
    over = tmp_path / "etc/provhad/templates"
    over.mkdir(parents=True)
    (over / "log.conf.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(jinja2.UndefinedError):
        Renderer(cfg).render(model.build(rows.small(), "slave"), FACTS)


def test_quote_escapes() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("x\ny\x00é") == '"x\\012y\\000\\303\\251"'


def test_helpers() -> None:
    assert (
        vivso_tftp(["172.20.0.2", "172.20.0.1"]) == "00:00:11:8b:0a:02:08:ac:14:00:02:ac:14:00:01"
    )
    assert provision_server("nmsslave.nmsprime.test") == "\\010nmsslave\\010nmsprime\\004test\\000"


def test_ddns_script_names_cpes_like_dhcpd_prints_macs(tmp_path: Path) -> None:
    """dhcpd's binary-to-ascii does not zero-pad octets; the mangle must not depend on it."""
    import base64
    import hashlib
    import hmac
    import subprocess

    script = render("slave")["etc/dhcp-nmsprime/named-ddns.sh"]
    code = script.split("python3 -c '", 1)[1].split('\' "$mac"', 1)[0]
    key = tmp_path / "cpe.key"
    key.write_text("00112233445566778899aabbccddeeff\n")
    want = (
        base64.b32encode(
            hmac.new(
                bytes.fromhex(key.read_text().strip()),
                bytes.fromhex("000c295a0102"),
                hashlib.sha256,
            ).digest()
        )
        .decode()[:6]
        .lower()
    )
    for spelled in ("0:c:29:5a:1:2", "00:0c:29:5a:01:02"):
        out = subprocess.run(
            ["python3", "-c", code, spelled, str(key)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want


def test_hashed_host_names_change_only_the_declaration_names() -> None:
    plain, hashed = render("slave"), render("slave", hashed_host_names=True)
    assert plain.keys() == hashed.keys()
    for rel in plain:
        if rel.endswith(("modems-host.conf", "mta.conf")):
            continue
        assert hashed[rel] == plain[rel], rel
    for rel in ("etc/dhcp-nmsprime/modems-host.conf", "etc/dhcp-nmsprime/mta.conf"):
        before, after = plain[rel].splitlines(), hashed[rel].splitlines()
        assert len(before) == len(after) and any(ln.startswith("host ") for ln in before)
        for a, b in zip(before, after, strict=True):
            if not a.startswith("host "):
                assert a == b
                continue
            name = a.split()[1]
            declared = host_declaration(name)
            assert re.fullmatch(re.escape(name) + r"-[0-9a-f]{8}", declared)
            # only the declaration's name: filename, ddns-hostname and the rest stay
            assert b == a.replace(f"host {name} {{", f"host {declared} {{", 1)
            assert declared_as(declared) == name


def test_declared_as_leaves_other_names_alone() -> None:
    for name in ("cm-1", "cm-1-deadbeef", "mta-7-0000000", "-abcdef12", "plain"):
        assert declared_as(name) == name
    assert declared_as(host_declaration("cm-1-deadbeef")) == "cm-1-deadbeef"


def test_hashed_host_names_pass_dhcpd_and_blame_their_rows(tmp_path: Path) -> None:
    cfg = config.Config(own_state="slave").with_root(str(tmp_path))
    cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, hashed_host_names=True))
    m = model.build(rows.small(), "slave")
    out = Renderer(cfg).render(m, FACTS)
    assert validate.probe_dhcpd(out, cfg.validate)
    for file, table in (("modems-host.conf", "modem"), ("mta.conf", "mta")):
        path = f"{out.dhcp_dir}/{file}"
        lines = out.files[path].data.decode().split("\n")
        at = next(i for i, ln in enumerate(lines, 1) if ln.startswith("host "))
        who = blame(m, out, path, at)
        assert who is not None and who.table == table
        row = m.modems[0] if table == "modem" else m.mtas[0]
        assert who.id == row.id
