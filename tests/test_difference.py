"""difference.changed_lines equals counting every line of both texts, whatever the edits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from provhad import difference
from provhad.difference import changed_lines, stretches


def counted(old: bytes, new: bytes) -> tuple[Counter[bytes], Counter[bytes]]:
    a, b = Counter(old.splitlines()), Counter(new.splitlines())
    return a - b, b - a


def host(n: int) -> bytes:
    return b"host cm-%d { hardware ethernet 00:11:22:%02x:%02x:%02x; }\n" % (
        n,
        n >> 16 & 255,
        n >> 8 & 255,
        n & 255,
    )


def edited(lines: list[bytes], rng: random.Random, edits: int) -> list[bytes]:
    out = list(lines)
    for _ in range(edits):
        kind = rng.choice(["insert", "delete", "change", "duplicate", "blank", "swap"])
        at = rng.randrange(len(out) + 1)
        if kind == "insert":
            out.insert(at, host(rng.randrange(10**6, 2 * 10**6)))
        elif kind == "delete" and out:
            del out[min(at, len(out) - 1)]
        elif kind == "change" and out:
            k = min(at, len(out) - 1)
            out[k] = out[k].replace(b"00:11", b"00:99")
        elif kind == "duplicate" and out:
            out.insert(at, out[rng.randrange(len(out))])
        elif kind == "blank":
            out.insert(at, b"\n")
        elif kind == "swap" and len(out) > 1:
            k = rng.randrange(len(out) - 1)
            out[k], out[k + 1] = out[k + 1], out[k]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_counting_every_line(seed: int) -> None:
    rng = random.Random(seed)
    lines = [host(i) for i in range(rng.randrange(0, 3000))]
    new = edited(lines, rng, rng.choice([0, 1, 2, 5, 50]))
    old, text = b"".join(lines), b"".join(new)
    if seed % 4 == 0:  # a last line without its newline
        old, text = old.rstrip(b"\n"), text.rstrip(b"\n")
    assert changed_lines(old, text) == counted(old, text)
    assert changed_lines(text, old) == counted(text, old)


def test_small_blocks_and_few_probes_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block and probe limits change the work done, never the answer."""
    rng = random.Random(7)
    lines = [host(i) for i in range(2000)]
    old, new = b"".join(lines), b"".join(edited(lines, rng, 30))
    expected = counted(old, new)
    for block, probes, most in [(7, 1, 3), (64, 2, 4096), (1 << 20, 16, 1)]:
        monkeypatch.setattr(difference, "BLOCK", block)
        monkeypatch.setattr(difference, "PROBES", probes)
        monkeypatch.setattr(difference, "MAX_STRETCHES", most)
        assert changed_lines(old, new) == expected, (block, probes, most)


def test_one_change_is_found_without_counting_the_file() -> None:
    lines = [host(i) for i in range(100_000)]
    new = list(lines)
    new[50_000] = host(7_000_000)
    old, text = b"".join(lines), b"".join(new)
    assert stretches(old, text) == ([lines[50_000]], [new[50_000]])
    gone, came = changed_lines(old, text)
    assert gone == Counter([lines[50_000].rstrip()]) and came == Counter([new[50_000].rstrip()])
    # an insertion and a deletion far apart: two stretches, a line each
    new = [*lines[:10], host(8_000_000), *lines[10:90_000], *lines[90_001:]]
    assert stretches(old, b"".join(new)) == ([b"", lines[90_000]], [host(8_000_000), b""])


def test_identical_and_empty_texts() -> None:
    text = b"".join(host(i) for i in range(10))
    assert changed_lines(text, text) == (Counter(), Counter())
    assert changed_lines(b"", b"") == (Counter(), Counter())
    assert changed_lines(b"", text) == (Counter(), Counter(text.splitlines()))
    assert changed_lines(text, b"") == (Counter(text.splitlines()), Counter())


def test_a_line_found_inside_a_longer_line_is_not_where_both_agree() -> None:
    old = b"aaaa-long-line-1\nbbbb-long-line-2\n"
    new = b"X-aaaa-long-line-1\nbbbb-long-line-2\n"
    assert changed_lines(old, new) == counted(old, new)
    assert changed_lines(old, new)[0] == Counter([b"aaaa-long-line-1"])


def test_a_difference_in_the_last_byte_of_a_block_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(difference, "BLOCK", 7)
    old = b"abcdefg\n" * 4
    new = b"abcdefX\n" + b"abcdefg\n" * 3
    assert changed_lines(old, new) == (Counter([b"abcdefg"]), Counter([b"abcdefX"]))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"", b""),
        (b"a\nb\nc\n", b"a\nb\nc\n"),
        (b"a\nb\nc\n", b"a\nB\nc\n"),
        (b"a\nb\nc\n", b"a\nc\n"),
        (b"a\nb\nc\n", b"x\na\nb\nc\n"),
        (b"a\nb\nc\n", b"a\nb\nc\nd\n"),
        (b"a\nbb\nc\n", b"a\nbc\nc\n"),  # differs within a line
        (b"ab\n", b"abc\n"),
        (b"aa\naa\naa\n", b"aa\naa\n"),  # the same line over and over
        (b"", b"host x\n"),
    ],
)
def test_small_cases(old: bytes, new: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    for block in (1, 2, 3, 1 << 20):
        monkeypatch.setattr(difference, "BLOCK", block)
        assert changed_lines(old, new) == counted(old, new), block
