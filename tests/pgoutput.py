"""Just enough of Postgres' logical-replication protocol (pgoutput, proto_version 1) to read a slot in a test.

A logical slot read with ``pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1',
'publication_names', 'square_mirror')`` returns one pgoutput message per row. The ones decoded here are those a CDC
consumer such as Debezium acts on: Relation (the table's name and columns, sent before its first change in a
session), Insert, Update, Delete and Truncate; Begin, Commit and the rest are only counted. Column values are
in text form, as pgoutput sends them without the ``binary`` option (None for NULL, UNCHANGED for an unchanged
TOASTed value). Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

UNCHANGED: Final = object()  # 'u': an unchanged TOASTed value pgoutput leaves out of an update
_OPERATIONS: Final = {ord("I"): "INSERT", ord("U"): "UPDATE", ord("D"): "DELETE"}


@dataclass(frozen=True)
class Change:
    operation: str  # INSERT, UPDATE, DELETE or TRUNCATE
    table: str  # schema.table, from the Relation message
    new: dict[str, object] = field(default_factory=dict)  # the new row (INSERT, UPDATE)
    old: dict[str, object] = field(default_factory=dict)  # the key ('K') or old row ('O') of UPDATE/DELETE
    old_kind: str = ""  # 'K' (replica identity key only), 'O' (whole old row) or '' (none sent)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def byte(self) -> str:
        self.at += 1
        return chr(self.data[self.at - 1])

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        text = self.data[self.at:end].decode()
        self.at = end + 1
        return text

    def tuple(self, columns: list[str]) -> dict[str, object]:
        row: dict[str, object] = {}
        for name in columns[: self.take("!h")]:
            kind = self.byte()
            if kind == "n":
                row[name] = None
            elif kind == "u":
                row[name] = UNCHANGED
            else:  # 't' (text); 'b' only with the binary option, which a test does not ask for
                length = self.take("!i")
                row[name] = self.data[self.at:self.at + length].decode()
                self.at += length
        return row


@dataclass
class Decoder:
    """Feed it the slot's messages in order; ``changes`` collects the row changes, ``messages`` counts every kind."""

    relations: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)

    def feed(self, message: bytes) -> None:
        kind = chr(message[0])
        self.messages[kind] = self.messages.get(kind, 0) + 1
        reader = _Reader(message)
        reader.at = 1
        if kind == "R":
            self._relation(reader)
        elif message[0] in _OPERATIONS:
            self._row_change(reader, _OPERATIONS[message[0]])
        elif kind == "T":
            count = reader.take("!i")
            reader.take("!b")  # options: CASCADE, RESTART IDENTITY
            for _ in range(count):
                self.changes.append(Change("TRUNCATE", self.relations[reader.take("!I")][0]))

    def _relation(self, reader: _Reader) -> None:
        relid = reader.take("!I")
        name = f"{reader.string()}.{reader.string()}"
        reader.take("!b")  # replica identity setting
        columns = []
        for _ in range(reader.take("!h")):
            reader.take("!b")  # flags (1: part of the key)
            columns.append(reader.string())
            reader.take("!I")  # type OID
            reader.take("!i")  # type modifier
        self.relations[relid] = (name, columns)

    def _row_change(self, reader: _Reader, operation: str) -> None:
        table, columns = self.relations[reader.take("!I")]
        old: dict[str, object] = {}
        old_kind = ""
        new: dict[str, object] = {}
        while reader.at < len(reader.data):
            part = reader.byte()
            if part in ("K", "O"):
                old_kind, old = part, reader.tuple(columns)
            else:  # 'N'
                new = reader.tuple(columns)
        self.changes.append(Change(operation, table, new, old, old_kind))
