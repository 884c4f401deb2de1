"""dhcpd's lease file without its OMAPI records: what every dhcpd start must begin from.

dhcpd writes each OMAPI host change to the lease file (``host X { dynamic; ... }``, a
tombstone ``host X { deleted; }`` for a config host deleted) and each subclass member OMAPI
added or then removed (``subclass "blocked" MAC { dynamic; ... }``, ``{ deleted; ... }``), and
reads them back after the config at every start, so they would override the config files.
:func:`strip_hosts` removes every top-level ``host`` and ``subclass`` statement and keeps every
other byte as it was (leases with their ``billing subclass`` lines, failover state,
server-duid, authoring-byte-order, comments). Only OMAPI writes top-level ``subclass``
records: a spawned subclass (``spawn with``) is written only as a lease's billing line.
It runs while dhcpd is stopped: from dhcpd's unit (ExecStartPre, systemd/dhcpd-provhad.conf)
as root, since provhad itself cannot write the file. Run as ``provhad strip-hosts FILE`` or
``python3 -m provhad.leases FILE``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: exit codes of the command: done (also: nothing to strip), the file could not be handled
EXIT_OK, EXIT_FAILED = 0, 1
#: the top-level statements OMAPI writes and :func:`without_hosts` removes
OMAPI_RECORDS = frozenset({b"host", b"subclass"})


class LeaseSyntaxError(ValueError):
    """The lease file does not split into statements (unterminated string or block)."""


@dataclass(frozen=True)
class Statement:
    """A top-level statement: ``data[start:end]`` from its first token to its ``;`` or its
    block's ``}``; ``keyword`` is the first token."""

    start: int
    end: int
    keyword: bytes


def statements(data: bytes) -> Iterator[Statement]:
    """The top-level statements of a lease file, in order. Quoted strings (``\\`` escapes)
    and ``#`` comments are skipped over; a brace or ``;`` inside them counts for nothing.
    Raises LeaseSyntaxError for an unterminated string or block (a file cut short)."""
    i, n = 0, len(data)
    depth, start = 0, -1
    while i < n:
        c = data[i]
        if c == 0x22:  # '"'
            if start < 0:
                start = i
            i += 1
            while i < n and data[i] != 0x22:
                i += 2 if data[i] == 0x5C else 1  # '\\' escapes the next byte
            if i >= n:
                raise LeaseSyntaxError(f"unterminated string from byte {start}")
        elif c == 0x23:  # '#': to the end of the line
            while i < n and data[i] != 0x0A:
                i += 1
            continue
        elif c in b" \t\r\n":
            pass
        else:
            if start < 0:
                start = i
            if c == 0x7B:  # '{'
                depth += 1
            elif c == 0x7D:  # '}'
                depth -= 1
                if depth < 0:
                    raise LeaseSyntaxError(f"'}}' without '{{' at byte {i}")
                if depth == 0:
                    yield _statement(data, start, i + 1)
                    start = -1
            elif c == 0x3B and depth == 0:  # ';'
                yield _statement(data, start, i + 1)
                start = -1
        i += 1
    if start >= 0:
        raise LeaseSyntaxError(f"statement from byte {start} is not terminated")


def _statement(data: bytes, start: int, end: int) -> Statement:
    word = data[start:end].split(None, 1)[0]
    return Statement(start, end, word.split(b"{", 1)[0].split(b";", 1)[0])


def without_hosts(data: bytes) -> tuple[bytes, int]:
    """``data`` without its top-level ``host`` and ``subclass`` statements, and how many there
    were. Each goes with the blank space before it back to the previous line end, and its own
    line end."""
    out: list[bytes] = []
    kept_to, count = 0, 0
    for st in statements(data):
        if st.keyword not in OMAPI_RECORDS:
            continue
        cut = data.rfind(b"\n", kept_to, st.start) + 1 or kept_to
        end = st.end + 1 if data[st.end : st.end + 1] == b"\n" else st.end
        if data[cut : st.start].strip():
            cut, end = st.start, st.end  # something else on the same line: keep the line
        out.append(data[kept_to:cut])
        kept_to, count = end, count + 1
    out.append(data[kept_to:])
    return b"".join(out), count


def strip_hosts(path: str) -> int:
    """Remove every host and subclass record from the lease file ``path``; how many were
    removed.

    Atomic (a temporary file beside it, fsynced, renamed over it, the directory fsynced) and
    keeping owner, group and mode; a file without such records is not written at all.
    Raises OSError or LeaseSyntaxError (the file is then untouched).
    """
    with open(path, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    stripped, count = without_hosts(data)
    if not count:
        return 0
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(stripped)
            out.flush()
            os.fchown(out.fileno(), st.st_uid, st.st_gid)
            os.fchmod(out.fileno(), st.st_mode & 0o7777)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """``strip-hosts FILE...``: each lease file in turn; a missing one is fine (dhcpd's
    first start creates it, and the drop-in names both distributions' paths)."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: provhad strip-hosts LEASEFILE...", file=sys.stderr)
        return 2
    status = EXIT_OK
    for path in paths:
        try:
            count = strip_hosts(path)
        except FileNotFoundError:
            print(f"{path}: no such lease file, nothing to strip")
            continue
        except (OSError, LeaseSyntaxError) as exc:
            print(f"provhad strip-hosts: {path}: {exc}; left as it was", file=sys.stderr)
            status = EXIT_FAILED
            continue
        print(
            f"{path}: {count} host/subclass records removed"
            if count
            else f"{path}: no host/subclass records"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
