"""The plain-data result of one consistent database read (input of the pure core)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

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
)


@dataclass(frozen=True)
class Snapshot:
    """Rows per table exactly as the database returned them (column name -> value).

    Only non-deleted rows of the generating queries are present, except ``fixed_ips``
    which holds the IPs of every non-deleted fixed-IP endpoint of any version (used to cut
    holes into CPEPub ranges, as upstream does).
    """

    provha: list[Row] = field(default_factory=list)
    provbase: list[Row] = field(default_factory=list)
    provvoip: list[Row] = field(default_factory=list)
    netgw: list[Row] = field(default_factory=list)
    ippool: list[Row] = field(default_factory=list)
    modem: list[Row] = field(default_factory=list)
    mta: list[Row] = field(default_factory=list)
    endpoint: list[Row] = field(default_factory=list)
    fixed_ips: list[str] = field(default_factory=list)
    node: str = ""
