"""The lines two versions of a big text file do not share, at memory speed.

A host file at 500k modems is some 50 MB in 700k lines; one change touches one line. Counting
every line of both versions costs about half a second; comparing them as bytes (``memcmp``)
costs a few milliseconds. :func:`changed_lines` walks both versions along their common runs
that way and counts lines only where they differ, so the cost of a change follows the change.
"""

from __future__ import annotations

from collections import Counter

#: bytes compared at a time while two texts agree (larger runs need no more Python work)
BLOCK = 1 << 20
#: lines of the old text tried, after a difference, to find where both agree again
PROBES = 16
#: lines shorter than this are not used to find where both agree again: a blank line or a
#: closing brace occurs everywhere and would pair the wrong places (still correct, slower)
MIN_PROBE = 12
#: differing stretches before the rest is simply counted line by line
MAX_STRETCHES = 4096


def _common(a: bytes, i: int, b: bytes, j: int) -> int:
    """How many bytes ``a[i:]`` and ``b[j:]`` have in common at their start."""
    view = memoryview(b)
    start = i
    while True:
        n = min(BLOCK, len(a) - i, len(b) - j)
        if n <= 0:
            return i - start
        if a.startswith(view[j : j + n], i):
            i, j = i + n, j + n
            continue
        lo, hi = 0, n  # a[i:i+lo] == b[j:j+lo]; not so up to hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if a.startswith(view[j + lo : j + mid], i + lo):
                lo = mid
            else:
                hi = mid
        return i + lo - start


def _line_end(text: bytes, at: int) -> int:
    end = text.find(b"\n", at)
    return len(text) if end < 0 else end + 1


def _resync(a: bytes, i: int, b: bytes, j: int) -> tuple[int, int] | None:
    """Line starts ``p >= i`` in ``a`` and ``q >= j`` in ``b`` where both agree again (a line of
    ``a`` found at a line start of ``b``), or None."""
    p = i
    for _ in range(PROBES):
        if p >= len(a):
            return None
        end = _line_end(a, p)
        line = a[p:end]
        if len(line) >= MIN_PROBE:
            q = b.find(line, j)
            while q > j and b[q - 1 : q] != b"\n":
                q = b.find(line, q + 1)
            if q >= 0:
                return p, q
        p = end
    return None


def stretches(old: bytes, new: bytes) -> tuple[list[bytes], list[bytes]]:
    """``old`` and ``new`` with their common runs cut out: what is left of each, in pieces
    that start and end at line boundaries. Both texts are the same lines as these pieces plus
    lines they have in common."""
    gone: list[bytes] = []
    came: list[bytes] = []
    i = j = 0
    for _ in range(MAX_STRETCHES):
        n = _common(old, i, new, j)
        if i + n >= len(old) and j + n >= len(new):
            return gone, came
        # back to the start of the line the difference is in (the run started at one)
        newline = old.rfind(b"\n", i, i + n)
        kept = 0 if newline < 0 else newline + 1 - i
        i, j = i + kept, j + kept
        found = _resync(old, i, new, j)
        if found is None:
            break
        p, q = found
        gone.append(old[i:p])
        came.append(new[j:q])
        i, j = p, q
    gone.append(old[i:])
    came.append(new[j:])
    return gone, came


def changed_lines(old: bytes, new: bytes) -> tuple[Counter[bytes], Counter[bytes]]:
    """The lines only in ``old`` and only in ``new``, as multisets: the same as
    ``Counter(old.splitlines()) - Counter(new.splitlines())`` and the other way round, with
    only the :func:`stretches` counted."""
    gone, came = stretches(old, new)
    a = Counter(line for piece in gone for line in piece.splitlines())
    b = Counter(line for piece in came for line in piece.splitlines())
    return a - b, b - a
