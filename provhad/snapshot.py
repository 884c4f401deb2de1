"""The plain-data result of one consistent database read (input of the pure core)."""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload

Row = dict[str, Any]

#: Columns of the big tables in the order the model reads them (db.QUERIES select them so).
MODEM_COLUMNS = ("id", "hostname", "mac", "public", "internet_access")
MTA_COLUMNS = ("id", "modem_id", "mac")
ENDPOINT_COLUMNS = ("id", "hostname", "mac", "fixed_ip", "ip", "modemmac")


T = TypeVar("T")


class PackedRows(Sequence[T]):
    """Rows kept as ``marshal`` blobs, a slice of rows per blob, unpacked while iterated.

    A blob takes about a sixth of the memory of its tuples (500k modems: 23 MB instead of
    some 150 MB) and unpacks at C speed (0.07 s for those). ``make`` turns each unpacked
    tuple into the item type (a NamedTuple of the model). Iterate; indexing unpacks all.
    """

    __slots__ = ("_length", "_make", "blobs", "spans")

    def __init__(
        self,
        blobs: Sequence[bytes],
        length: int,
        make: Callable[[Any], T] | None = None,
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.blobs = tuple(blobs)
        self._length = length
        self._make = make
        #: the first and the last id (a row's first field) of each blob, when known
        self.spans = None if spans is None else tuple(spans)

    @property
    def plain(self) -> bool:
        """Whether iteration gives the unpacked tuples themselves (no ``make``)."""
        return self._make is None

    @classmethod
    def pack(
        cls, rows: Sequence[tuple[Any, ...]], per_blob: int = 4096
    ) -> Sequence[tuple[Any, ...]]:
        """``rows`` packed; unchanged if a value has a type marshal does not take."""
        try:
            blobs = [
                marshal.dumps(list(rows[at : at + per_blob]))
                for at in range(0, len(rows), per_blob)
            ]
        except ValueError:
            return rows
        return PackedRows(blobs, len(rows))

    def __len__(self) -> int:
        return self._length

    def batches(self) -> Iterator[list[tuple[Any, ...]]]:
        """The plain tuples, a blob at a time (what :meth:`made` turns into items)."""
        for blob in self.blobs:
            yield marshal.loads(blob)

    def made(self, rows: Iterable[tuple[Any, ...]]) -> list[T]:
        """``rows`` (plain tuples of :meth:`batches`) as the items iteration gives."""
        make = self._make
        return cast(list[T], list(rows)) if make is None else list(map(make, rows))

    def __iter__(self) -> Iterator[T]:
        make = self._make
        for blob in self.blobs:
            rows = marshal.loads(blob)
            yield from rows if make is None else map(make, rows)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedRows(<{self._length} rows in {len(self.blobs)} blobs>)"


class Packer(Generic[T]):
    """Collects rows (tuples of ints, strings and None) into a :class:`PackedRows`, a blob at
    a time, so the unpacked rows never exist all at once."""

    def __init__(
        self, make: Callable[[Any], T] | None = None, per_blob: int = 4096, spans: bool = False
    ) -> None:
        self._make = make
        self._per_blob = per_blob
        self._blobs: list[bytes] = []
        self._rows: list[tuple[Any, ...]] = []
        self._length = 0
        #: with ``spans``: the lowest and highest first field (the id) of each blob
        self._spans: list[tuple[int, int]] | None = [] if spans else None

    def append(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._per_blob:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._blobs.append(marshal.dumps(self._rows))
            self._length += len(self._rows)
            if self._spans is not None:
                ids = [r[0] for r in self._rows]
                self._spans.append((min(ids), max(ids)))
            self._rows = []

    def done(self) -> PackedRows[T]:
        self._flush()
        return PackedRows(self._blobs, self._length, self._make, self._spans)


class Table(Sequence[Row]):
    """The rows of one big table as tuples (usually :class:`PackedRows`) under one column list.

    A tuple takes a third of the memory of a dict with the same values, and at 500k modems
    that is a hundred megabytes. Indexing and iterating give dicts, so code that handles rows
    as dicts (tests, reports) works unchanged; the model reads :func:`tuples` instead.
    """

    __slots__ = ("columns", "rows")

    def __init__(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        self.columns: tuple[str, ...] = tuple(columns)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Row: ...
    @overload
    def __getitem__(self, index: slice) -> Table: ...
    def __getitem__(self, index: int | slice) -> Row | Table:
        if isinstance(index, slice):
            return Table(self.columns, list(self.rows[index]))
        return dict(zip(self.columns, self.rows[index], strict=True))

    def __iter__(self) -> Iterator[Row]:
        columns = self.columns
        return (dict(zip(columns, row, strict=True)) for row in self.rows)

    def __repr__(self) -> str:
        return f"Table({self.columns!r}, <{len(self.rows)} rows>)"


def tuples(rows: Sequence[Row], columns: tuple[str, ...]) -> Iterable[tuple[Any, ...]]:
    """``rows`` as tuples of ``columns`` in that order (a missing column is None)."""
    if isinstance(rows, Table):
        if rows.columns == columns:
            return rows.rows  # the hot path: what the database read delivers
        where = {c: i for i, c in enumerate(rows.columns)}
        index = [where.get(c) for c in columns]
        return (tuple(None if i is None else row[i] for i in index) for row in rows.rows)
    return (tuple(row.get(c) for c in columns) for row in rows)


#: Tables a snapshot holds, in the order they are read.
TABLES: tuple[str, ...] = (
    "provha",
    "provbase",
    "provvoip",
    "netgw",
    "ippool",
    "modem",
    "mta",
    "endpoint",
    "ippool6",
    "endpoint6",
)


@dataclass(frozen=True)
class Snapshot:
    """Rows per table exactly as the database returned them (column name -> value; the big
    tables as :class:`Table`).

    Only non-deleted rows of the generating queries are present, except ``fixed_ips``
    which holds the IPs of every non-deleted fixed-IP endpoint of any version (used to cut
    holes into CPEPub ranges, as upstream does).
    """

    provha: Sequence[Row] = field(default_factory=list)
    provbase: Sequence[Row] = field(default_factory=list)
    provvoip: Sequence[Row] = field(default_factory=list)
    netgw: Sequence[Row] = field(default_factory=list)
    ippool: Sequence[Row] = field(default_factory=list)
    modem: Sequence[Row] = field(default_factory=list)
    mta: Sequence[Row] = field(default_factory=list)
    endpoint: Sequence[Row] = field(default_factory=list)
    #: the DHCPv6 rows (version '6'), read for Kea (provhad.model6)
    ippool6: Sequence[Row] = field(default_factory=list)
    endpoint6: Sequence[Row] = field(default_factory=list)
    fixed_ips: list[str] = field(default_factory=list)
    node: str = ""
