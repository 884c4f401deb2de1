"""Validation by the real daemons: dhcpd -t, named-checkconf, chronyd -p and sh -n read the
staged set as it will be live (unchanged files from their live path, changed ones staged)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from provhad.config import ValidateConfig
from provhad.generations import Staged, live_path
from provhad.render import CHRONY, DDNS, DHCPD, NAMED, RenderedSet
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
    wanted = services if services is not None else {DHCPD, NAMED, CHRONY, DDNS}
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
