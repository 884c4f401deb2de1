"""Validation by the real daemons: dhcpd -t, named-checkconf, chronyd -p and sh -n read the
staged set as it will be live (unchanged files from their live path, changed ones staged)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provhad.config import ValidateConfig
from provhad.generations import Staged, live_path
from provhad.hosts import HostEntry, host_block, names_by_mac, shape_problem
from provhad.render import CHRONY, DDNS, DHCPD, KEA6, NAMED, RenderedSet
from provhad.services import child_env

_DHCPD_ERROR = re.compile(r"^(?P<path>/\S+) line (?P<line>\d+): (?P<msg>.*)$")


@dataclass(frozen=True)
class Problem:
    """One complaint of a validator, mapped back to a live path when it names a file."""

    service: str
    message: str
    path: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        if self.path and self.line is not None:
            where = f"{self.path} line {self.line}: "
        return f"{self.service}: {where}{self.message}"


@dataclass
class Validation:
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # dhcpd echoes the offending bytes of a file back
            timeout=timeout,
            start_new_session=True,  # so a timeout kills nothing of ours
            check=False,
            env=child_env(),
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer within {timeout:.0f} s"
    return proc.returncode, proc.stdout + proc.stderr


def run_dhcpd_t(conf: str, vcfg: ValidateConfig) -> tuple[int, str]:
    """``dhcpd -t`` over ``conf`` as it is on disk: exit status and its complaints."""
    rc, out = _run([vcfg.dhcpd, "-t", "-cf", conf], vcfg.timeout)
    return rc, "; ".join(str(p) for p in parse_dhcpd_errors(out)) if rc else ""


def parse_dhcpd_errors(output: str) -> list[Problem]:
    """dhcpd -t's ``FILE line N: message`` lines; else its last meaningful line."""
    found = []
    for line in output.splitlines():
        m = _DHCPD_ERROR.match(line.strip())
        if m:
            found.append(Problem(DHCPD, m["msg"], live_path(m["path"]), int(m["line"])))
    if found:
        return found
    lines = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and ("error" in ln.lower() or "exiting" in ln.lower() or "not found" in ln)
    ]
    return [Problem(DHCPD, lines[0] if lines else "dhcpd -t failed without a message")]


def run(staged: Staged, vcfg: ValidateConfig, services: set[str] | None = None) -> Validation:
    """Run each real daemon's parser over the staged set as it would be live."""
    rendered = staged.rendered
    wanted = services if services is not None else {DHCPD, NAMED, CHRONY, DDNS, KEA6}
    result = Validation()
    if DHCPD in wanted:
        conf = staged.locate(rendered.dhcpd_conf)
        rc, out = _run([vcfg.dhcpd, "-t", "-cf", conf], vcfg.timeout)
        result.checked.append("dhcpd -t")
        if rc != 0:
            result.problems.extend(parse_dhcpd_errors(out))
    for f in rendered.by_service(NAMED) if NAMED in wanted else []:
        rc, out = _run([vcfg.named_checkconf, staged.locate(f.path)], vcfg.timeout)
        result.checked.append("named-checkconf")
        if rc != 0:
            result.problems.append(Problem(NAMED, _clean(out, staged), f.path))
    for f in rendered.by_service(CHRONY) if CHRONY in wanted else []:
        rc, out = _run([vcfg.chronyd, "-p", "-f", staged.locate(f.path)], vcfg.timeout)
        result.checked.append("chronyd -p")
        if rc != 0:
            result.problems.append(Problem(CHRONY, _clean(out, staged), f.path))
    for f in rendered.by_service(DDNS) if DDNS in wanted else []:
        rc, out = _run(["sh", "-n", staged.locate(f.path)], vcfg.timeout)
        result.checked.append("sh -n")
        if rc != 0:
            result.problems.append(Problem(DDNS, _clean(out, staged), f.path))
    if KEA6 in wanted and rendered.by_service(KEA6):
        result.checked.append("kea-dhcp6 -t")
        result.problems.extend(check_kea(rendered, vcfg))
    return result


def _clean(output: str, staged: Staged) -> str:
    text = " ".join(output.split())
    for live, tmp in staged.paths.items():
        text = text.replace(tmp, live)
    return text or "rejected without a message"


def probe_dhcpd(rendered: RenderedSet, vcfg: ValidateConfig) -> bool:
    """Whether dhcpd accepts a small self-contained set (written as is, e.g. into a temp root)."""
    for f in rendered.files.values():
        if f.service == DHCPD:
            os.makedirs(os.path.dirname(f.path), exist_ok=True)
            Path(f.path).write_bytes(f.data)
    rc, _out = _run([vcfg.dhcpd, "-t", "-cf", rendered.dhcpd_conf], vcfg.timeout)
    return rc == 0


# --- Kea (DHCPv6) -------------------------------------------------------------------------------

_KEA_INCLUDE = re.compile(r'<\?include\s+"(?P<path>[^"]*)"\s*\?>')
_KEA_VERDICTS = ("Error encountered:", "Syntax check failed with:")
#: upstream's static global6.conf (lifetimes), included by the check config when present
KEA_GLOBALS = "global6.conf"


def kea_check_config(gateways: str, globals_file: str | None) -> str:
    """A Kea main config with the layout of NMS Prime's dhcp6-nmsprime.conf (shared-networks
    from gateways6.conf, globals from global6.conf) but no interface and an in-memory lease
    file: upstream's binds eth0/fd00::1 and a PostgreSQL lease database, and ``kea-dhcp6 -t``
    fails on any host without that address, whatever the generated files hold."""
    globals_ = f"    <?include {json.dumps(globals_file)}?>,\n" if globals_file else ""
    return (
        '{\n"Dhcp6": {\n'
        '    "interfaces-config": { "interfaces": [ ] },\n'
        '    "lease-database": { "type": "memfile", "persist": false },\n'
        f"{globals_}"
        '    "shared-networks": [\n'
        f"        <?include {json.dumps(gateways)}?>\n"
        "    ]\n}\n}\n"
    )


def relocate_includes(text: str, where: dict[str, str]) -> str:
    """``text`` with each ``<?include "P"?>`` of a path in ``where`` pointing at ``where[P]``."""

    def one(m: re.Match[str]) -> str:
        path = m["path"]
        return f"<?include {json.dumps(where[path])}?>" if path in where else m[0]

    return _KEA_INCLUDE.sub(one, text)


def parse_kea_errors(output: str, back: dict[str, str]) -> list[Problem]:
    """kea-dhcp6 -t's verdict (``Error encountered: MSG (FILE:LINE:COL)`` or ``Syntax check
    failed with: FILE:LINE.COL: MSG``) as a Problem naming the live path and line; ``back``
    maps the check copies to what the message should name."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    found = [
        ln.split(marker, 1)[1].strip() for ln in lines for marker in _KEA_VERDICTS if marker in ln
    ]
    if not found:
        found = [ln for ln in lines if " ERROR " in f" {ln} " or "not found" in ln][-1:]
    problems = []
    for msg in found or ["kea-dhcp6 -t failed without a message"]:
        for tmp, live in back.items():
            msg = msg.replace(tmp, live)
        path, line = None, None
        for live in back.values():
            at = re.search(re.escape(live) + r":(\d+)[.:]", msg)
            if at:
                path, line = live, int(at[1])
                break
        problems.append(Problem(KEA6, msg, path, line))
    return problems


def check_kea(rendered: RenderedSet, vcfg: ValidateConfig) -> list[Problem]:
    """``kea-dhcp6 -t`` over the Kea files of ``rendered`` as they would be live.

    The files are copied into a private directory with their includes relocated there, under
    :func:`kea_check_config`; unchanged files have the live bytes, so this is the set as it
    would be live. The copies go with the directory, also when the check fails.
    """
    files = rendered.by_service(KEA6)
    base = rendered.kea_dir
    with tempfile.TemporaryDirectory(prefix="provhad-kea6-") as tmp:
        where = {f.path: os.path.join(tmp, os.path.relpath(f.path, base)) for f in files}
        for f in files:
            os.makedirs(os.path.dirname(where[f.path]), exist_ok=True)
            text = relocate_includes(f.data.decode("utf-8"), where)
            Path(where[f.path]).write_text(text, encoding="utf-8")
        globals_file = os.path.join(base, KEA_GLOBALS)
        main = os.path.join(tmp, "dhcp6-check.conf")
        Path(main).write_text(
            kea_check_config(
                where[os.path.join(base, "gateways6.conf")],
                globals_file if os.path.isfile(globals_file) else None,
            ),
            encoding="utf-8",
        )
        rc, out = _run([vcfg.kea_dhcp6, "-t", main], vcfg.timeout)
        back = {t: live for live, t in where.items()}
        back[main] = "(built-in check config)"
        back[globals_file] = globals_file  # read in place, named as it is
        return parse_kea_errors(out, back) if rc != 0 else []


# --- host entries in O(change) ------------------------------------------------------------------

_OPTION_DEFINITION = re.compile(
    r"^[ \t]*option[ \t]+(?:space[ \t]+[\w.-]+|[\w.-]+[ \t]+code[ \t]+\d+[ \t]*=[^;\n]*);",
    re.M,
)
#: host-checking stub: one subnet so that the config is complete without any interface
_HOST_STUB_HEAD = (
    "# provhad: host entries checked on their own\nsubnet 127.0.0.0 netmask 255.0.0.0 { }\n"
)


def option_definitions(*configs: str) -> str:
    """The ``option space`` and ``option X code N = ...`` lines of ``configs`` (dhcpd.conf,
    global.conf as rendered): what host statements may name besides dhcpd's own options."""
    return "".join(m[0] + "\n" for text in configs for m in _OPTION_DEFINITION.finditer(text))


def duplicates(entries: Iterable[HostEntry]) -> list[Problem]:
    """Host names used twice, and MACs under two names or more (dhcpd takes the latter from
    files, but OMAPI refuses the second add and clients get whichever host it finds first)."""
    listed = list(entries)
    names = [e.name for e in listed]
    macs = [e.mac.lower() for e in listed if e.mac is not None]
    if len(set(names)) == len(names) and len(set(macs)) == len(macs):
        return []  # the common case, at C speed
    seen: set[str] = set()
    twice: set[str] = set()
    for name in names:
        (twice if name in seen else seen).add(name)
    problems = [Problem(DHCPD, f"host name {n} is used twice") for n in sorted(twice)]
    problems += [
        Problem(DHCPD, f"hardware address {mac} is used by hosts {', '.join(names)}")
        for mac, names in sorted(names_by_mac(listed).items())
    ]
    return problems


#: dhcpd -t runs per check_hosts call at most; each names one bad host
MAX_HOST_CHECK_RUNS = 20


def _stub_check(
    entries: Sequence[HostEntry], vcfg: ValidateConfig, head: str
) -> tuple[int | None, list[Problem]]:
    """One dhcpd -t over ``head`` and one host block per line: None and no problems when it
    passes, else the index of the first host it complains about (None when it names none) and
    the complaints about that host."""
    first = head.count("\n") + 1
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", prefix="provhad-hosts-", suffix=".conf"
    ) as stub:
        stub.write(head)
        stub.writelines(host_block(e) for e in entries)
        stub.flush()
        rc, out = _run([vcfg.dhcpd, "-t", "-cf", stub.name], vcfg.timeout)
    if rc == 0:
        return None, []
    found = parse_dhcpd_errors(out)
    at = [p.line - first if p.path == stub.name and p.line is not None else -1 for p in found]
    if not 0 <= at[0] < len(entries):
        return None, [Problem(DHCPD, f"hosts checked on their own: {p.message}") for p in found]
    name = entries[at[0]].name
    return at[0], [
        Problem(DHCPD, f"host {name}: {p.message}")
        for p, i in zip(found, at, strict=True)
        if i == at[0]
    ]


def check_hosts(
    entries: Sequence[HostEntry], vcfg: ValidateConfig, definitions: str = ""
) -> list[Problem]:
    """``entries`` proven the way dhcpd reads them, on their own: their shape in Python, then
    ``dhcpd -t`` over a stub of ``definitions`` (see :func:`option_definitions`) and one host
    block per line. Costs O(len(entries)), not O(hosts).

    Each problem names its host. dhcpd's complaints after the first error of a file may be
    echoes of it, so only the first bad host of a run is blamed, and the hosts after it are
    checked again without it (hosts before it passed): one run per bad host, at most
    :data:`MAX_HOST_CHECK_RUNS`.
    """
    problems = [
        Problem(DHCPD, f"host {e.name}: {why}") for e in entries if (why := shape_problem(e))
    ]
    if problems:
        return problems
    head = _HOST_STUB_HEAD + definitions
    rest = entries
    for _ in range(MAX_HOST_CHECK_RUNS):
        if not rest:
            return problems
        bad, found = _stub_check(rest, vcfg, head)
        problems += found
        if bad is None:
            return problems
        rest = rest[bad + 1 :]
    if rest:
        problems.append(
            Problem(DHCPD, f"{len(rest)} hosts from {rest[0].name} on not checked: too many errors")
        )
    return problems


def check_hosts_in_pieces(
    entries: Sequence[HostEntry],
    vcfg: ValidateConfig,
    definitions: str = "",
    piece: int = 10_000,
) -> list[Problem]:
    """All ``entries`` checked in pieces of ``piece`` hosts, plus :func:`duplicates` across
    them: linear, where dhcpd -t over one file of them all is quadratic in practice (its host
    hashes have a fixed 22,501 buckets)."""
    problems = duplicates(entries)
    for start in range(0, len(entries), piece):
        problems += check_hosts(entries[start : start + piece], vcfg, definitions)
    return problems
