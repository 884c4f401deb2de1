"""An independent reference of what upstream NMS Prime writes, for the parity test.

Written from a reading of cablelabs/os-provisioning at tag 3.1.0 (899b5f362, 2022-04-11, the
last release on MariaDB; it holds 3811e5f5c and the later commits 355a267a8, be95f0f0a,
449ae7915 and 274835851), in a ProvHA pair with ProvVoip enabled. Each function names the
lines it follows. It takes the raw rows of a snapshot (strings as the database holds them)
and does exactly what the PHP does with them, odd values included; it shares no code with
provhad.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from provhad.snapshot import Row, Snapshot


def _php_empty(value: object) -> bool:
    """PHP's falsy test on a column value (NULL, '', '0', 0)."""
    return value is None or value == "" or value == "0" or value == 0


def _ip2long(value: object) -> int | None:
    """PHP ip2long(): dotted quad only, else false (None here)."""
    try:
        return int(ipaddress.IPv4Address(str(value)))
    except ValueError:
        return None


def get_ranges(pool: Row, fixed_ips: Iterable[object]) -> str:
    """IpPool::getRanges (IpPool.php:213-274)."""
    empty = f"\t\t\trange {pool['ip_pool_start']} {pool['ip_pool_end']};\n"  # :215
    if pool["type"] != "CPEPub":  # :217
        return empty
    longs = [_ip2long(ip) for ip in fixed_ips]  # :222-231 (fixed_ip=1, not deleted)
    start, end = _ip2long(pool["ip_pool_start"]), _ip2long(pool["ip_pool_end"])
    assert start is not None and end is not None
    eps = sorted({e for e in longs if e is not None and start <= e <= end})  # :233-245
    if not eps:
        return empty
    ranges = []
    i = start
    for ep in eps:  # :249-259
        if i == ep:
            i += 1
            continue
        ranges.append((i, ep - 1))
        i = ep + 1
    if i <= end:  # :261
        ranges.append((i, end))
    lines = [  # :265-271, array_unique: a one-address piece is `range a;`
        "\t\t\trange " + " ".join(dict.fromkeys(str(ipaddress.IPv4Address(x)) for x in r)) + ";"
        for r in ranges
    ]
    return "\n".join(lines) + "\n"


def netgw_conf(netgw: Row, pools: list[Row], fixed_ips: list[object]) -> str:
    """NetGw::makeDhcp4Conf (NetGw.php:566-670), ProvHA enabled."""
    mine = [p for p in pools if p["netgw_id"] == netgw["id"]]  # :570 (version 4 already)
    if not mine:
        return ""  # :573-576
    out = f'shared-network "{netgw["hostname"]}"\n{{\n'  # :578
    for p in mine:
        data = f"\n\tsubnet {p['net']} netmask {p['netmask']}\n\t{{"  # :595
        data += f"\n\t\toption routers {p['router_ip']};"
        if p.get("broadcast_ip") not in (None, ""):  # :597
            data += f"\n\t\toption broadcast-address {p['broadcast_ip']};"
        dns = [p.get(f"dns{n}_ip") for n in (1, 2, 3)]
        if any(d not in (None, "") for d in dns):  # :600-610: "a, b, " minus its last comma
            tmp = "".join(f"{d}, " for d in dns if d not in (None, ""))
            pos = tmp.rindex(",")
            data += "\n\t\toption domain-name-servers " + tmp[:pos] + tmp[pos + 1 :] + ";"
        ranges = get_ranges(p, fixed_ips)
        if ranges:  # :612 ("\n" of a fully cut pool is truthy)
            data += "\n\n\t\tpool\n\t\t{\n" + ranges
            data += '\n\t\t\tfailover peer "dhcpd-failover";\n'  # :615-617
            if not _php_empty(p.get("active", 1)):  # :619-646
                data += {
                    "CM": '\n\t\t\tallow members of "CM";\n\t\t\tdeny unknown-clients;',
                    "CPEPriv": '\n\t\t\tallow members of "Client";'
                    '\n\t\t\tdeny members of "Client-Public";',
                    "CPEPub": '\n\t\t\tallow members of "Client-Public";',
                    "MTA": '\n\t\t\tallow members of "MTA";',
                }.get(str(p["type"]), "")
            else:
                data += "\n\t\t\tdeny all clients;"
            data += "\n\t\t}"
        if not _php_empty(p.get("optional")):  # :651-653
            data += "\n\n\t\t" + str(p["optional"])
        data += "\n\t}\n"
        data += f"\n\tsubnet {p['router_ip']} netmask 255.255.255.255\n\t{{"  # :657-659
        data += "\n\t\tallow leasequery;\n\t}\n"
        out += data
    return out + "}\n"  # :664


def _reserved(mac: object) -> bool:
    return _php_empty(mac) or str(mac).lower().startswith("ff:")


def modems_host(snap: Snapshot, own: str, peer: str) -> str:
    """Modem::make_dhcp_cm_all / generate_cm_dhcp_entry (Modem.php:482-515, 549-583), slave."""
    out = []
    for m in sorted(snap.modem, key=lambda r: r["id"]):  # chunk() orders by id
        if _reserved(m["mac"]):  # :488
            continue
        h = m["hostname"]
        line = (
            f'host {h} {{ hardware ethernet {m["mac"]}; filename "cm/{h}.cfg"; ddns-hostname "{h}";'
        )
        macs = [t["mac"] for t in snap.mta if t["modem_id"] == m["id"]]
        if any(not str(x or "").lower().startswith("ff:") for x in macs):  # :494-496
            line += f" option ccc.dhcp-server-1 {own}; option ccc.SecondaryDHCPServer {peer};"
        out.append(line + "}\n")  # :514
    return "".join(out)


def modems_public(snap: Snapshot) -> str:
    """generate_cm_dhcp_entry_pub (Modem.php:518-530)."""
    return "".join(
        f'subclass "Client-Public" {m["mac"]}; # CM id:{m["id"]}\n'
        for m in sorted(snap.modem, key=lambda r: r["id"])
        if m.get("public") and not _reserved(m["mac"])
    )


def blocked(snap: Snapshot) -> str:
    """createDhcpBlockedCpesFile (Modem.php:762-770, 811-814): no newline at the end."""
    rows = [
        f'subclass "blocked" {m["mac"]}; # CM id: {m["id"]}'
        for m in snap.modem
        if m.get("internet_access") == 0 and m["mac"] is not None
    ]
    return "# All Modems (remote agent IDs) without internet access\n" + "\n".join(rows)


def mta_conf(snap: Snapshot) -> str:
    """Mta::make_dhcp_mta_all (Mta.php:195-222)."""
    return "".join(
        f'host mta-{t["id"]} {{ hardware ethernet {t["mac"]}; filename "mta/mta-{t["id"]}.cfg"; '
        f'ddns-hostname "mta-{t["id"]}"; option host-name "{t["id"]}"; }}\n'
        for t in sorted(snap.mta, key=lambda r: r["id"])
        if not _reserved(t["mac"])
    )


def endpoints_host(snap: Snapshot) -> str:
    """Endpoint::makeDhcp4All (Endpoint.php:169-196)."""
    out = []
    for e in snap.endpoint:
        line = f"host {e['hostname']} {{ "  # :180
        line += (
            f"hardware ethernet {e['mac']}"
            if not _php_empty(e["mac"])
            else f"host-identifier option agent.remote-id {e['modemmac']}"
        )
        line += " ; "
        if not _php_empty(e["fixed_ip"]) and not _php_empty(e["ip"]):  # :185
            line += f"fixed-address {e['ip']}; "
        out.append(line + "}\n")
    return "".join(out)


def global_classes(provbase: Row, fqdn: str) -> str:
    """The class part of ProvBase::make_dhcp_glob_conf (ProvBase.php:239-258)."""
    encoded = "".join(f"\\{len(w):03o}{w}" for w in fqdn.split(".")) + "\\000"  # :239-245
    limit = provbase.get("max_cpe") or 4  # :247
    cpe = (
        'match if ((substring(option vendor-class-identifier,0,6) != "docsis") and '
        '(substring(option vendor-class-identifier,0,4) != "pktc"));'
    )
    return (
        "\n# CLASS Specs for CM, MTA, CPE\n"
        'class "CM" {\n\tmatch if (substring(option vendor-class-identifier,0,6) = "docsis");'
        "\n\toption ccc.dhcp-server-1 0.0.0.0;\n\tddns-updates on;\n}\n\n"
        'class "MTA" {\n\tmatch if (substring(option vendor-class-identifier,0,4) = "pktc");'
        f'\n\toption ccc.provision-server 0 "{encoded}"; # number of letters before every through '
        'dot seperated word\n\toption ccc.realm "\\005BASIC\\0011\\000";\n\tddns-updates on;\n}\n\n'
        f'class "Client" {{\n\t{cpe}\n\tspawn with binary-to-ascii(16, 8, ":", substring(option '
        "agent.remote-id, 0, 6)); # create a sub-class automatically\n"
        f"\tlease limit {limit}; # max {limit} private cpe per cm\n}}\n\n"
        f'class "Client-Public" {{\n\t{cpe}\n\tmatch pick-first-value (option agent.remote-id);\n'
        f"\tlease limit {limit}; # max {limit} public cpe per cm\n}}\n\n"
        "# All CPEs of modems without internet access - will be defined as subclass\n"
        f'class "blocked" {{\n\t{cpe}\n\tmatch pick-first-value (option agent.remote-id);\n'
        "\tdeny booting;\n}\n\n"
    )


#: dhcpd.conf (Install/files/dhcpd.conf:38) and log.conf (Install/files/log.conf:8-21) lines
#: that the slave's files must hold too
TR069 = "option dhcp-parameter-request-list = concat(option dhcp-parameter-request-list,2b);"
LOG_CM_MAC_BYTE = (
    'suffix(concat("0", binary-to-ascii(16, 8, "", substring(option agent.remote-id, {i}, 1))), 2)'
)
LOG_HW_MAC_BYTE = 'suffix(concat("0", binary-to-ascii(16, 8, "", substring(hardware, {i}, 1))), 2)'
