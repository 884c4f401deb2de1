"""Would host names that hash better cut dhcpd's start-up? ``python bench/hostnames.py [--quick]``.

dhcpd 4.4 keeps config hosts in two hash tables of a fixed 22,501 buckets, one keyed by the
declaration's name and one by the hardware address (type byte + MAC). Both use a shift-and-add
hash folded to 16 bits, under which every character weighs twice its right neighbour: the
varying tail of ``cm-<id>`` or of a MAC from one OUI can only reach a few hundred buckets, and
every insert walks its chain. This script times the real ``dhcpd -t`` over configs shaped like
provhad's modems-host.conf for several name and MAC schemes, and next to each time gives the
chain cost predicted by a model of that hash, so that the numbers can be explained.

Writes ``bench/hostnames.json`` (the doc section in docs/benchmarks.md is written by hand from it).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DHCPD = "/usr/sbin/dhcpd"
#: dhcpd's HOST_HASH_SIZE (includes/dhcpd.h): both host tables have this many buckets
BUCKETS = 22501
#: the first modem id NMS Prime hands out (auto-increment start of the modem table)
ID0 = 100_000
#: one cable-modem vendor's OUI, the prefix all MACs of the sequential and in-OUI schemes share
OUI = (0x38, 0x43, 0x7D)
#: dhcpd hashes the hardware address with its type byte in front (1 = ethernet)
HTYPE_ETHERNET = 1

HEAD = """\
# minimal valid dhcpd.conf: one subnet, then the hosts as provhad's modems-host.conf writes them
authoritative;
ddns-update-style interim;
ddns-updates off;
subnet 10.0.0.0 netmask 255.0.0.0 { }
"""


def dhcpd_hash(key: bytes) -> int:
    """The bucket dhcpd's string hash puts ``key`` in (a model of omapip/hash.c, for explaining
    the timings: each byte is added to the doubled sum, carries beyond 16 bits folded back)."""
    acc = 0
    for byte in key:
        acc = (acc << 1) + byte
        while acc > 0xFFFF:
            acc = (acc & 0xFFFF) + (acc >> 16)
    return acc % BUCKETS


def chain_cost(keys: Iterable[bytes]) -> dict[str, float]:
    """Buckets used, the longest chain, and the mean chain length an insert walks."""
    counts = collections.Counter(dhcpd_hash(k) for k in keys)
    n = sum(counts.values())
    # the i-th key into a bucket walks i-1 entries: sum over buckets of c(c-1)/2
    walked = sum(c * (c - 1) / 2 for c in counts.values())
    return {"buckets": len(counts), "longest": max(counts.values()), "walk": walked / n}


def suffix(mid: int) -> str:
    """8 hex digits derived from the id alone: the same on every run, master or slave."""
    return hashlib.blake2b(str(mid).encode(), digest_size=4).hexdigest()


#: declaration names: what NMS Prime writes today, and candidates a slave could write instead
NAMES: dict[str, Callable[[int], str]] = {
    "cm-<id>": lambda mid: f"cm-{mid}",
    "cm-<id reversed>": lambda mid: f"cm-{str(mid)[::-1]}",
    "cm-<id>-<8 hex>": lambda mid: f"cm-{mid}-{suffix(mid)}",
}


def mac_sequential(i: int, _rnd: random.Random) -> bytes:
    return bytes((*OUI, (i >> 16) & 255, (i >> 8) & 255, i & 255))


def mac_in_oui(i: int, _rnd: random.Random) -> bytes:
    """Scattered within one vendor's OUI (unique: an odd multiplier permutes the 24-bit tail)."""
    t = (i * 0x9E3779B1 + 0x5A5A5A) & 0xFFFFFF
    return bytes((*OUI, t >> 16, (t >> 8) & 255, t & 255))


def mac_random(_i: int, rnd: random.Random) -> bytes:
    """Random over all 48 bits, unicast (the model of a network of very many vendors)."""
    raw = bytearray(rnd.getrandbits(48).to_bytes(6, "big"))
    raw[0] &= 0xFE
    return bytes(raw)


MACS: dict[str, Callable[[int, random.Random], bytes]] = {
    "sequential": mac_sequential,
    "random in one OUI": mac_in_oui,
    "random": mac_random,
}


def hosts(n: int, names: str, macs: str) -> tuple[list[str], list[bytes]]:
    """``n`` modems' declaration names and MACs (unique: a random 48-bit MAC can repeat)."""
    rnd = random.Random(12)
    name_of, mac_of = NAMES[names], MACS[macs]
    out_names = [name_of(ID0 + i) for i in range(n)]
    seen: set[bytes] = set()
    out_macs: list[bytes] = []
    i = 0
    while len(out_macs) < n:
        mac = mac_of(i, rnd)
        i += 1
        if mac not in seen:
            seen.add(mac)
            out_macs.append(mac)
    return out_names, out_macs


def config_text(decls: list[str], addrs: list[bytes]) -> str:
    """dhcpd.conf with these modems in id order; filename and ddns-hostname keep ``cm-<id>``
    whatever the declaration's name, as a slave using another name would have to."""
    lines = [HEAD]
    for i, (decl, mac) in enumerate(zip(decls, addrs, strict=True)):
        public = f"cm-{ID0 + i}"
        lines.append(
            f'host {decl} {{ hardware ethernet {mac.hex(":")}; filename "cm/{public}.cfg"; '
            f'ddns-hostname "{public}";}}\n'
        )
    return "".join(lines)


def time_dhcpd_t(conf: Path) -> dict[str, float]:
    """One ``dhcpd -t`` over ``conf``: wall and CPU seconds (CPU is what the machine's other load
    does not inflate) and its peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [DHCPD, "-t", "-q", "-cf", str(conf)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"dhcpd -t refused {conf}: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": after.ru_maxrss / 1024}


def measure(n: int, names: str, macs: str, runs: int, workdir: Path) -> dict[str, Any]:
    """dhcpd -t's best of ``runs`` and the hash model's cost for one scheme at one size."""
    decls, addrs = hosts(n, names, macs)
    conf = workdir / "dhcpd.conf"
    conf.write_text(config_text(decls, addrs))
    timings = [time_dhcpd_t(conf) for _ in range(runs)]
    best = min(timings, key=lambda t: t["cpu_s"])
    return {
        "hosts": n,
        "names": names,
        "macs": macs,
        "runs": runs,
        "cpu_s": best["cpu_s"],
        "wall_s": best["wall_s"],
        "cpu_s_all": [t["cpu_s"] for t in timings],
        "name_hash": chain_cost(d.encode() for d in decls),
        "mac_hash": chain_cost(bytes((HTYPE_ETHERNET,)) + a for a in addrs),
    }


#: (names, macs) measured at every size; the rest only below the largest size
MAIN = [
    ("cm-<id>", "sequential"),
    ("cm-<id>-<8 hex>", "sequential"),
    ("cm-<id>", "random"),
    ("cm-<id>-<8 hex>", "random"),
]
EXTRA = [
    ("cm-<id reversed>", "sequential"),
    ("cm-<id>", "random in one OUI"),
    ("cm-<id>-<8 hex>", "random in one OUI"),
]


def dhcpd_version() -> str:
    proc = subprocess.run([DHCPD, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k only")
    ap.add_argument("--out", type=Path, default=BENCH / "hostnames.json")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [100_000, 300_000, 500_000]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hostnames-") as tmp:
        for n in sizes:
            cases = MAIN + (EXTRA if n != sizes[-1] else [])
            runs = 3 if n <= 100_000 else 1
            for names, macs in cases:
                r = measure(n, names, macs, runs, Path(tmp))
                results.append(r)
                print(
                    f"{n:>7} {names:<18} {macs:<18} cpu {r['cpu_s']:7.2f} s  "
                    f"wall {r['wall_s']:7.2f} s  name walk {r['name_hash']['walk']:7.1f}  "
                    f"mac walk {r['mac_hash']['walk']:7.1f}",
                    flush=True,
                )
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dhcpd": dhcpd_version(),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "note": "cpu_s: user+sys of the best run (machine shared); walk: mean chain entries an "
        "insert passes, from a model of dhcpd's hash",
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
