"""Validation by the real daemons: dhcpd -t, named-checkconf, chronyd -p and sh -n read the
staged set as it will be live (unchanged files from their live path, changed ones staged)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import operator
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from provhad.config import ValidateConfig
from provhad.generations import Staged, live_path
from provhad.hosts import HOST_FILES, HostEntry, host_block, names_by_mac, shape_problem
from provhad.render import CHRONY, DDNS, DHCPD, KEA6, NAMED, RenderedSet
from provhad.services import child_env

#: hosts per ``dhcpd -t`` run when host files are checked in pieces: dhcpd's cost per host
#: grows with the hosts of one run (fixed hash tables), a run costs 3 ms to start; 5,000 cost
#: the least at 500k modems (measured: docs/architecture.md, "Validation follows the change")
PIECE_HOSTS = 5_000
#: from this many host lines on, a full validation checks dhcpd's host files in pieces (below
#: it one ``dhcpd -t`` over the whole set is as fast, within 10 %)
PIECES_FROM_HOSTS = 20_000
#: what Validation.checked says when dhcpd's part was checked in pieces
IN_PIECES = "dhcpd -t (in pieces)"


@dataclass(frozen=True)
class Pieces:
    """When and how a full validation checks dhcpd's host files in pieces."""

    #: from this many hosts on (0: never; the whole set by one ``dhcpd -t``)
    from_hosts: int = PIECES_FROM_HOSTS
    #: hosts per ``dhcpd -t`` run
    hosts: int = PIECE_HOSTS
    #: ``dhcpd -t`` runs at a time (None: one per core)
    jobs: int | None = None


#: the operator's (there is no setting: the measured values, docs/architecture.md)
PIECES = Pieces()

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
    #: what the daemons accept but a person should know (hardware addresses used twice)
    notes: list[str] = field(default_factory=list)

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


def run(
    staged: Staged,
    vcfg: ValidateConfig,
    services: set[str] | None = None,
    pieces: Pieces = PIECES,
) -> Validation:
    """Run each real daemon's parser over the staged set as it would be live.

    dhcpd's part is checked in ``pieces`` when the host table is big enough (see
    :func:`check_dhcpd_in_pieces`), else by one ``dhcpd -t`` over the whole set.
    """
    rendered = staged.rendered
    wanted = services if services is not None else {DHCPD, NAMED, CHRONY, DDNS, KEA6}
    result = Validation()
    split = check_dhcpd_in_pieces(staged, vcfg, pieces) if DHCPD in wanted else None
    if split is not None:
        result = split
    elif DHCPD in wanted:
        conf = staged.locate(rendered.dhcpd_conf)
        rc, out = _run([vcfg.dhcpd, "-t", "-cf", conf], vcfg.timeout)
        result.checked.append("dhcpd -t")
        if rc != 0:
            result.problems.extend(parse_dhcpd_errors(out))
        result.notes = host_duplicates(_host_includes(staged)[2])[1]
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
    piece: int = PIECE_HOSTS,
    jobs: int | None = None,
) -> list[Problem]:
    """All ``entries`` proven as :func:`check_hosts` proves a few: :func:`duplicates` and
    their shape in Python, then ``dhcpd -t`` over pieces of ``piece`` hosts on a stub of
    ``definitions``, ``jobs`` at a time (see :func:`check_pieces`). Each problem names its
    host."""
    problems = duplicates(entries)
    shapes = [Problem(DHCPD, f"host {e.name}: {why}") for e in entries if (why := shape_problem(e))]
    if shapes:
        return problems + shapes
    table = "".join(host_block(e) for e in entries).encode("utf-8")
    pieces = cut("(hosts)", table, piece) or [Piece("(hosts)", table, 0, len(table))]
    checked = check_pieces(pieces, vcfg, _HOST_STUB_HEAD + definitions, jobs)
    return problems + [
        Problem(DHCPD, f"host {entries[p.line - 1].name}: {p.message}")
        if p.line is not None and 0 < p.line <= len(entries)
        else Problem(DHCPD, f"hosts checked on their own: {p.message}")
        for p in checked.problems
    ]


# --- a full validation of a big host table in pieces --------------------------------------------

_INCLUDE = re.compile(rb'^[ \t]*include[ \t]+"(?P<path>[^"]+)"[ \t]*;[ \t]*$', re.M)
# a host declaration starting a line, as the templates write them (see cut); the first line of
# a piece is matched on its own (a literal "\nhost " is searched for several times faster than
# a pattern with ^ and re.M, or with optional blanks)
_HOST_NAME = re.compile(rb"\nhost (?P<name>[^\s{]+)")
_FIRST_HOST_NAME = re.compile(rb"host (?P<name>[^\s{]+)")
_HARDWARE = re.compile(rb"hardware[ \t]+ethernet[ \t]+(?P<mac>[0-9a-fA-F:]+)")
#: hardware addresses used twice that Validation.notes lists by name, at most
MAX_NOTES = 5


@dataclass(frozen=True)
class Piece:
    """Consecutive lines ``source[start:end]`` of a host file, checked by one ``dhcpd -t``."""

    #: the file the lines are from, as a problem names it
    path: str
    source: bytes
    start: int
    end: int

    @property
    def first(self) -> int:
        """The file's line number (1-based) of the piece's first line."""
        return self.source.count(b"\n", 0, self.start) + 1


@dataclass
class HostIndex:
    """The host names and hardware addresses of host files, gathered piece by piece (while
    the next pieces are checked), for duplicates across pieces."""

    names: list[bytes] = field(default_factory=list)
    macs: set[bytes] = field(default_factory=set)
    #: hardware addresses seen, duplicates counted
    mac_count: int = 0

    def add(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        """The hosts declared at the start of a line of ``data[start:end]``."""
        stop = len(data) if end is None else end
        if start == 0 or data[start - 1] == 10:
            first = _FIRST_HOST_NAME.match(data, start, stop)
            self.names += [first["name"]] if first else []
        self.names += _HOST_NAME.findall(data, start, stop)
        macs = b" ".join(_HARDWARE.findall(data, start, stop)).lower().split()
        self.mac_count += len(macs)
        self.macs.update(macs)

    def merge(self, other: HostIndex) -> None:
        self.names += other.names
        self.macs.update(other.macs)
        self.mac_count += other.mac_count

    @property
    def names_twice(self) -> bool:
        # sorting runs that are each in order (names by row id) costs little
        ordered = sorted(self.names)
        return any(map(operator.eq, ordered, itertools.islice(ordered, 1, None)))

    @property
    def macs_twice(self) -> bool:
        return len(self.macs) != self.mac_count


@dataclass
class Checked:
    """What :func:`check_pieces` found: dhcpd's complaints, and the host names and hardware
    addresses of all pieces (for duplicates across them)."""

    problems: list[Problem] = field(default_factory=list)
    hosts: HostIndex = field(default_factory=HostIndex)
    #: False when a piece does not hold whole blocks (as many ``{`` as ``}``): a template
    #: whose blocks span lines in a way the cut does not follow; check the files whole
    whole_blocks: bool = True


def cut(path: str, data: bytes, hosts: int) -> list[Piece] | None:
    """``data`` (host file ``path``) cut before a line starting with ``host `` about every
    ``hosts`` hosts, by size: cutting costs O(pieces), not O(lines). None when not every
    ``host `` of ``data`` starts a line (an operator's template that indents them, or puts
    the word in a string): the pieces and their :class:`HostIndex` would not follow it."""
    count = data.count(b"\nhost ") + data.startswith(b"host ")
    if data.count(b"host ") != count:
        return None
    step = max(1, len(data) * hosts // max(count, 1))
    pieces = []
    pos = 0
    while pos < len(data):
        at = data.find(b"\nhost ", pos + step - 1) if pos + step < len(data) else -1
        end = len(data) if at < 0 else at + 1
        pieces.append(Piece(path, data, pos, end))
        pos = end
    return pieces


def _check_piece(piece: Piece, head: bytes, vcfg: ValidateConfig, where: str) -> Checked:
    """One ``dhcpd -t`` over ``head`` then ``piece`` in file ``where``; complaints about the
    piece's lines name its file and line. The piece's names and MACs are read while dhcpd
    runs."""
    try:
        with open(where, "wb") as fh:
            fh.write(head)
            fh.write(memoryview(piece.source)[piece.start : piece.end])
    except OSError as exc:  # as a validator that cannot run: the set is not proven
        return Checked([Problem(DHCPD, f"{piece.path} from line {piece.first}: {exc}")])
    try:
        with subprocess.Popen(
            [vcfg.dhcpd, "-t", "-cf", where],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env(),
        ) as proc:
            src, start, end = piece.source, piece.start, piece.end
            index = HostIndex()
            index.add(src, start, end)
            balanced = src.count(b"{", start, end) == src.count(b"}", start, end)
            try:
                out, _ = proc.communicate(timeout=vcfg.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return Checked(
                    [Problem(DHCPD, f"{vcfg.dhcpd}: no answer within {vcfg.timeout:.0f} s")]
                )
    except FileNotFoundError:
        return Checked([Problem(DHCPD, f"{vcfg.dhcpd}: not found")])
    finally:
        os.unlink(where)  # the pieces of a big table together are as big as the table
    found = Checked([], index, balanced)
    if proc.returncode == 0:
        return found
    skip = head.count(b"\n")
    for p in parse_dhcpd_errors(out.decode("utf-8", "replace")):
        if p.path == where and p.line is not None and p.line > skip:
            found.problems.append(
                Problem(DHCPD, p.message, piece.path, piece.first + p.line - skip - 1)
            )
        else:
            what = f"{piece.path} from line {piece.first}, checked on its own"
            found.problems.append(Problem(DHCPD, f"{what}: {p.message}"))
    return found


def check_pieces(
    pieces: Sequence[Piece],
    vcfg: ValidateConfig,
    head: str,
    jobs: int | None = None,
    rest: str | None = None,
) -> Checked:
    """``dhcpd -t`` over each piece after ``head`` (a stub: a subnet and
    :func:`host_definitions`), ``jobs`` runs at a time (default: one per core), and over
    ``rest`` (a dhcpd.conf as it is on disk) when given. Problems in order, ``rest``'s
    first; a piece's name its file and line."""
    heads = head.encode("utf-8")
    result = Checked()
    with (
        tempfile.TemporaryDirectory(prefix="provhad-pieces-") as tmp,
        ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool,
    ):
        whole = pool.submit(_run, [vcfg.dhcpd, "-t", "-cf", rest], vcfg.timeout) if rest else None
        runs = [
            pool.submit(_check_piece, p, heads, vcfg, os.path.join(tmp, f"piece-{i}.conf"))
            for i, p in enumerate(pieces)
        ]
        if whole is not None:
            rc, out = whole.result()
            result.problems += parse_dhcpd_errors(out) if rc else []
        for run_ in runs:
            one = run_.result()
            result.problems += one.problems
            result.hosts.merge(one.hosts)  # while the next pieces run
            result.whole_blocks = result.whole_blocks and one.whole_blocks
    return result


def host_definitions(rendered: RenderedSet) -> str:
    """The option definitions of ``rendered``'s dhcpd.conf and global.conf (see
    :func:`option_definitions`): what host statements are checked against."""
    texts = [
        rendered.files[p].data.decode("utf-8", "replace")
        for p in (rendered.dhcpd_conf, os.path.join(rendered.dhcp_dir, "global.conf"))
        if p in rendered.files
    ]
    return option_definitions(*texts)


def host_files(conf: bytes, rendered: RenderedSet) -> dict[str, str]:
    """The host files (:data:`provhad.hosts.HOST_FILES` of ``rendered``) that dhcpd.conf text
    ``conf`` includes: the path as the include names it -> the live path."""
    found = {}
    for m in _INCLUDE.finditer(conf):
        named = m["path"].decode("utf-8", "replace")
        live = live_path(named)
        here = live in rendered.files and os.path.dirname(live) == rendered.dhcp_dir
        if here and os.path.basename(live) in HOST_FILES:
            found[named] = live
    return found


def host_duplicates(
    files: Mapping[str, bytes], index: HostIndex | None = None
) -> tuple[list[Problem], list[str]]:
    """Across host files (live path -> bytes): a host name declared again (dhcpd refuses it,
    "host X: already exists", case counts) as a problem at the later declaration, and
    hardware addresses under two names or more (dhcpd takes them from the files; OMAPI
    refuses the second add) as notes. ``index``: the files' :class:`HostIndex`, when known.
    Fast when there are none (the common case, in C)."""
    if index is None:
        index = HostIndex()
        for data in files.values():
            index.add(data)
    problems: list[Problem] = []
    notes: list[str] = []
    if index.names_twice:
        seen: set[bytes] = set()
        for path, data in files.items():
            for at in re.finditer(rb"(?:^|\n)host (?P<name>[^\s{]+)", data):
                if at["name"] in seen:
                    line = data.count(b"\n", 0, at.start("name")) + 1
                    name = at["name"].decode("utf-8", "replace")
                    problems.append(Problem(DHCPD, f"host {name}: already exists", path, line))
                seen.add(at["name"])
    if index.macs_twice:
        owners: dict[bytes, list[bytes]] = {}
        for data in files.values():
            for text in data.splitlines():
                mac = _HARDWARE.search(text)
                name = _FIRST_HOST_NAME.match(text)
                if mac and name:
                    owners.setdefault(mac["mac"].lower(), []).append(name["name"])
        shared = sorted((m, n) for m, n in owners.items() if len(n) > 1)
        notes += [
            f"hardware address {m.decode()} is used by hosts "
            f"{', '.join(x.decode('utf-8', 'replace') for x in n)} (dhcpd takes them all from "
            "the files and answers with one of them; OMAPI refuses all but the first)"
            for m, n in shared[:MAX_NOTES]
        ]
        if len(shared) > MAX_NOTES:
            notes.append(f"... and {len(shared) - MAX_NOTES} more hardware addresses used twice")
    return problems, notes


def _host_includes(staged: Staged) -> tuple[bytes, dict[str, str], dict[str, bytes]]:
    """dhcpd.conf of ``staged`` as dhcpd -t reads it, the host files it includes (see
    :func:`host_files`) and their rendered bytes by live path."""
    rendered = staged.rendered
    if rendered.dhcpd_conf not in rendered.files:
        return b"", {}, {}
    conf = Path(staged.locate(rendered.dhcpd_conf)).read_bytes()
    files = host_files(conf, rendered)
    return conf, files, {live: rendered.files[live].data for live in files.values()}


def check_dhcpd_in_pieces(
    staged: Staged, vcfg: ValidateConfig, pieces: Pieces = PIECES
) -> Validation | None:
    """dhcpd's part of ``staged`` proven in linear time: the set with its host files left out
    (their includes turned into comments, so that every other line keeps its number) by one
    ``dhcpd -t``, the host files in pieces of ``pieces.hosts`` hosts on a stub (as
    :func:`check_hosts`), and duplicates across them in Python (see
    :func:`host_duplicates`). Problems name the real file and line. None when a single
    ``dhcpd -t`` over the set is the check to make: fewer than
    ``pieces.from_hosts`` hosts, or host files the cut cannot follow."""
    rendered = staged.rendered
    if pieces.from_hosts <= 0:
        return None
    conf, files, datas = _host_includes(staged)
    if sum(d.count(b"\n") for d in datas.values()) < pieces.from_hosts:  # a host a line
        return None
    cuts: list[Piece] = []
    for live, data in datas.items():
        some = cut(live, data, pieces.hosts)
        if some is None:
            return None
        cuts += some

    def left_out(m: re.Match[bytes]) -> bytes:
        return b"# " + m[0] + b" (checked in pieces)" if m["path"].decode() in files else m[0]

    with tempfile.NamedTemporaryFile(prefix="provhad-rest-", suffix=".conf") as rest:
        rest.write(_INCLUDE.sub(left_out, conf))
        rest.flush()
        checked = check_pieces(
            cuts, vcfg, _HOST_STUB_HEAD + host_definitions(rendered), pieces.jobs, rest.name
        )
    if not checked.whole_blocks:
        return None
    result = Validation(checked=[IN_PIECES])
    result.problems, result.notes = host_duplicates(datas, checked.hosts)
    result.problems += [
        dataclasses.replace(p, path=rendered.dhcpd_conf) if p.path == rest.name else p
        for p in checked.problems
    ]
    return result
