"""The host files in O(change): a render by slices equals the whole render byte for byte, and a
change renders only the slices it touches; the live files' hashes are not read again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import marshal
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provhad import config, db, model
from provhad.plan import FileDigests, live_hashes
from provhad.render import SLICE_IDS, HostFacts, Renderer, SliceCache, id_slices, packed_slices
from provhad.snapshot import (
    ENDPOINT_COLUMNS,
    MODEM_COLUMNS,
    MTA_COLUMNS,
    PackedRows,
    Row,
    Snapshot,
    Table,
)
from tests import rows

ROOT = "/srv/slave-root"
T0 = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
#: ids from 100 on: the model's blobs of 4096 rows straddle the slices of 4096 ids
FIRST, COUNT = 100, 9000


def facts(at: dt.datetime = T0) -> HostFacts:
    return HostFacts(now=at, fqdn="nmsslave.nmsprime.test", omapi=None)


def mac(n: int) -> str:
    return ":".join(
        f"{b:02x}" for b in (0x00, 0x11, n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255)
    )


def network() -> dict[int, Row]:
    return {
        i: rows.modem(i, mac(i), public=int(i % 50 == 0), internet_access=int(i % 70 != 0))
        for i in range(FIRST, FIRST + COUNT)
    }


def snapshot(modems: dict[int, Row], mtas: dict[int, int], **provha: object) -> Snapshot:
    base = rows.small()
    endpoints = [
        {
            "id": 200000 + i,
            "hostname": f"cpe-{i}",
            "mac": mac(0x1000000 + i),
            "fixed_ip": 0,
            "ip": None,
            "modemmac": None,
        }
        for i in range(0, COUNT, 7)
    ]
    return dataclasses.replace(
        base,
        provha=[rows.provha(**provha)],
        modem=[modems[i] for i in sorted(modems)],
        mta=[
            {"id": t, "modem_id": owner, "mac": mac(0x2000000 + t)}
            for t, owner in sorted(mtas.items())
        ],
        endpoint=endpoints,
    )


def files(renderer: Renderer, snap: Snapshot, at: dt.datetime = T0) -> dict[str, bytes]:
    m = model.build(snap, "slave")
    return {p: f.data for p, f in renderer.render(m, facts(at)).files.items()}


CFG = config.Config(own_state="slave").with_root(ROOT)


def delete(modems: dict[int, Row], mtas: dict[int, int]) -> None:
    for i in (4095, 4096, 8191):  # the last and first ids of slices
        del modems[i]


def insert(modems: dict[int, Row], mtas: dict[int, int]) -> None:
    for i in (4095, 20000, 20001):  # a gap again, and a new slice at the end
        modems[i] = rows.modem(i, mac(i))


def update(modems: dict[int, Row], mtas: dict[int, int]) -> None:
    modems[5000]["mac"] = mac(0x3000000)
    modems[5001]["public"] = 1


def add_mta(modems: dict[int, Row], mtas: dict[int, int]) -> None:
    mtas[300500] = 6000  # modem 6000 gets the ccc options


def drop_all(modems: dict[int, Row], mtas: dict[int, int]) -> None:
    modems.clear()
    mtas.clear()


STEPS: list[tuple[Callable[[dict[int, Row], dict[int, int]], None], int]] = [
    # (change, slices of modems-host.conf it renders again)
    (delete, 2),
    (insert, 2),
    (update, 1),
    (add_mta, 1),
    (drop_all, 0),
    (insert, 2),
]


def test_render_by_slices_equals_the_whole_render_across_changes() -> None:
    cache = SliceCache()
    sliced, whole = Renderer(CFG, slices=cache), Renderer(CFG)
    modems, mtas = network(), {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    first = files(sliced, snapshot(modems, mtas))
    assert first == files(whole, snapshot(modems, mtas))
    modems_host = f"{ROOT}/etc/dhcp-nmsprime/modems-host.conf"
    assert first[modems_host].count(b"\nhost ") == COUNT - 1
    for change, expected in STEPS:
        change(modems, mtas)
        snap = snapshot(modems, mtas)
        before = cache.slices.get(modems_host, {}).copy()
        assert files(sliced, snap) == files(whole, snap), change.__name__
        after = cache.slices[modems_host] if modems else {}
        assert len(after.keys() - before.keys()) == expected, change.__name__
        assert cache.mismatches == []


def test_a_setting_every_host_line_reads_renders_every_slice_again() -> None:
    cache = SliceCache()
    sliced, whole = Renderer(CFG, slices=cache), Renderer(CFG)
    modems, mtas = network(), {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    files(sliced, snapshot(modems, mtas))
    path = f"{ROOT}/etc/dhcp-nmsprime/modems-host.conf"
    before = set(cache.slices[path])
    snap = snapshot(modems, mtas, master="172.20.0.9")  # the ccc options name the peer
    assert files(sliced, snap) == files(whole, snap)
    assert len(before) == len(cache.slices[path]) == 3
    assert not before & set(cache.slices[path])


def test_an_unchanged_set_renders_no_slice() -> None:
    cache = SliceCache()
    sliced = Renderer(CFG, slices=cache)
    snap = snapshot(network(), {})
    files(sliced, snap)
    files(sliced, snap)
    rendered, total = cache.last
    assert rendered == 0 and total > 0


def test_the_periodic_proof_catches_a_wrong_slice_and_uses_the_whole_render() -> None:
    cache = SliceCache()
    sliced = Renderer(CFG, slices=cache)
    snap = snapshot(network(), {})
    good = files(sliced, snap)
    path = f"{ROOT}/etc/dhcp-nmsprime/modems-host.conf"
    key = next(iter(cache.slices[path]))
    cache.slices[path][key] = b"host broken {}\n"  # what a bug in the keying would do
    interval = model.build(snap, "slave").ha.rebuild_interval
    soon = T0 + dt.timedelta(seconds=interval - 1)
    assert files(sliced, snap, soon)[path] != good[path]  # between proofs the cache is trusted
    assert cache.mismatches == []
    later = T0 + dt.timedelta(seconds=interval)
    assert files(sliced, snap, later) == good
    assert cache.take_mismatches() == [
        f"{path}: the render by slices differed from the whole render; the whole render is used"
    ]
    assert files(sliced, snap, later) == good  # the slices were dropped and rendered again


def test_an_operators_template_is_rendered_whole(tmp_path: Path) -> None:
    (tmp_path / "modems-host.conf.j2").write_text(
        "# {{ modems|length }} modems\n{% for m in modems %}host {{ m.hostname }} {}\n{% endfor %}"
    )
    cache = SliceCache()
    dirs = [str(tmp_path), *Renderer(CFG).template_dirs[1:]]
    sliced, whole = Renderer(CFG, dirs, slices=cache), Renderer(CFG, dirs)
    snap = snapshot(network(), {})
    out = files(sliced, snap)
    assert out == files(whole, snap)
    assert out[f"{ROOT}/etc/dhcp-nmsprime/modems-host.conf"].startswith(b"# 9000 modems\n")
    assert f"{ROOT}/etc/dhcp-nmsprime/modems-host.conf" not in cache.slices


@pytest.mark.parametrize("ids", [[], [5], [1, 2, 4095, 4096, 9000], [9000, 3, 4096, 4095]])
def test_id_slices_cover_the_rows_in_order(ids: list[int]) -> None:
    items = [model.ModemRef(i, mac(i)) for i in ids]
    runs = list(id_slices(items))
    assert [x for _plain, run in runs for x in run()] == items
    for plain, run in runs:
        assert plain == [tuple(x) for x in run()]
    if ids == sorted(ids):
        assert len(runs) == len({i // SLICE_IDS for i in ids})


def test_live_hashes_read_a_file_again_only_when_it_changed(tmp_path: Path) -> None:
    m = model.build(rows.small(), "slave")
    rendered = Renderer(CFG.with_root(str(tmp_path))).render(m, facts())
    path = next(iter(rendered.files))
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(b"one\n")
    digests = FileDigests()
    first = live_hashes(rendered, digests)[path]
    assert first is not None
    digests.remember(path, "what provhad wrote")  # a stamp seen before is not read again
    assert live_hashes(rendered, digests)[path] == "what provhad wrote"
    Path(path + ".new").write_bytes(b"two\n")  # same size, replaced by rename: a new inode
    os.replace(path + ".new", path)
    second = live_hashes(rendered, digests)[path]
    assert second not in (None, first, "what provhad wrote")
    Path(path).write_bytes(b"three\n")  # written in place
    assert live_hashes(rendered, digests)[path] not in (None, first, second)
    os.unlink(path)
    assert live_hashes(rendered, digests)[path] is None


def chunked(snap: Snapshot) -> Snapshot:
    """``snap`` with its big tables kept as the database read keeps them: one packed blob per
    chunk of db.CHUNK_IDS ids (db.RowCache)."""

    def table(rows_: list[Row], columns: tuple[str, ...]) -> Table:
        by_chunk: dict[int, list[tuple[Any, ...]]] = {}
        for r in rows_:
            by_chunk.setdefault(int(r["id"]) // db.CHUNK_IDS, []).append(
                tuple(r.get(c) for c in columns)
            )
        blobs = [marshal.dumps(by_chunk[k]) for k in sorted(by_chunk)]
        return Table(columns, PackedRows(blobs, len(rows_)))

    return dataclasses.replace(
        snap,
        modem=table(list(snap.modem), MODEM_COLUMNS),
        mta=table(list(snap.mta), MTA_COLUMNS),
        endpoint=table(list(snap.endpoint), ENDPOINT_COLUMNS),
    )


def test_modelling_by_chunks_equals_the_whole_build_and_models_only_changed_chunks() -> None:
    parts = model.PartCache()
    cache = SliceCache()
    sliced, whole = Renderer(CFG, slices=cache), Renderer(CFG)
    modems, mtas = network(), {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    snap = chunked(snapshot(modems, mtas))
    m = model.build(snap, "slave", parts=parts)
    assert m == model.build(snap, "slave")
    assert parts.last == (10, 10)  # chunks: 3 of modems, 3 of MTAs, 4 of endpoints
    assert model.build(snap, "slave", parts=parts) == m
    assert parts.last == (0, 10)
    # (change, chunks modelled again): add_mta changes the MTA chunk and thereby which modems
    # of one modem chunk own an MTA
    for change, fresh in [(delete, 2), (insert, 2), (update, 1), (add_mta, 2), (drop_all, 0)]:
        change(modems, mtas)
        snap = chunked(snapshot(modems, mtas))
        m = model.build(snap, "slave", parts=parts)
        assert m == model.build(snap, "slave"), change.__name__
        assert parts.last[0] == fresh, (change.__name__, parts.last)
        got = {p: f.data for p, f in sliced.render(m, facts()).files.items()}
        assert got == files(whole, snap), change.__name__
        assert cache.mismatches == []


def test_the_slices_of_a_model_built_by_chunks_are_keyed_without_unpacking() -> None:
    parts, cache = model.PartCache(), SliceCache()
    sliced = Renderer(CFG, slices=cache)
    modems, mtas = network(), {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    m = model.build(chunked(snapshot(modems, mtas)), "slave", parts=parts)
    assert packed_slices(m.modems) is not None
    sliced.render(m, facts())
    update(modems, mtas)
    m = model.build(chunked(snapshot(modems, mtas)), "slave", parts=parts)
    sliced.render(m, facts())
    # modems-host.conf's one changed slice; the MTA and endpoint files' slices are reused
    assert cache.last[0] == 2  # and modems-clients-public.conf's (modem 5001 went public)


@pytest.mark.parametrize(
    "clash",
    [
        # a modem's name again in a later chunk: the lower id keeps it
        lambda modems, eps: modems[8500].update(hostname="cm-200"),
        # an endpoint named like a modem: the modem keeps it
        lambda modems, eps: eps.append(dict(eps[0], id=299999, hostname="cm-4200")),
        # a modem named like an MTA's host: the modem keeps it (modems come first)
        lambda modems, eps: modems[300].update(hostname="mta-300100"),
    ],
)
def test_a_name_declared_in_two_chunks_is_judged_as_the_whole_build_judges_it(
    clash: Callable[[dict[int, Row], list[Row]], None],
) -> None:
    mtas = {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    clean = chunked(snapshot(network(), mtas))
    modems = network()
    eps = list(snapshot(modems, mtas).endpoint)
    clash(modems, eps)
    snap = chunked(dataclasses.replace(snapshot(modems, mtas), endpoint=eps))
    whole, whole_clean = model.build(snap, "slave"), model.build(clean, "slave")
    assert any("is already used by" in r.reason for r in whole.rejects)
    assert not any("is already used by" in r.reason for r in whole_clean.rejects)
    # with one cache: the clash comes, goes and comes again (the name index follows)
    parts = model.PartCache()
    for s, expected in [(clean, whole_clean), (snap, whole), (clean, whole_clean), (snap, whole)]:
        assert model.build(s, "slave", parts=parts) == expected
        if s is clean:  # built by chunks: the index holds exactly the names declared
            c = expected.counts()
            assert len(parts.names) == c["modems"] + c["mtas"] + c["endpoints"]


def test_the_pool_part_is_made_again_when_a_pool_changes() -> None:
    parts = model.PartCache()
    modems, mtas = network(), {300000 + i: i for i in range(FIRST, FIRST + COUNT, 3)}
    snap = chunked(snapshot(modems, mtas))
    first = model.build(snap, "slave", parts=parts)
    pools = [dict(r) for r in snap.ippool]
    pools[0]["dns1_ip"] = "10.9.9.9"
    moved = dataclasses.replace(snap, ippool=pools)
    again = model.build(moved, "slave", parts=parts)
    assert again == model.build(moved, "slave") and again.netgws != first.netgws
    assert model.build(snap, "slave", parts=parts) == first
