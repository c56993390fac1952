"""A customer record: one committed version of a profile, immutable.

Every committed change builds a new record (doc in Square's field order, creation and update times, sort keys),
which lets the list/search index (``index.py``) lag behind the truth (eventual consistency) by simply holding on
to older records, and makes Retrieve/List cheap.
"""

from __future__ import annotations

from typing import Any

import orjson

from .validation import PUBLIC_FIELDS

FIELD_ORDER = ("id", "created_at", "updated_at", "given_name", "family_name", "nickname", "company_name",
               "email_address", "address", "phone_number", "birthday", "reference_id", "note", "preferences",
               "creation_source", "group_ids", "segment_ids", "version", "tax_ids")


class CustomerRec:
    """One committed version of a customer profile."""

    __slots__ = ("ckey", "created_ts", "dkey", "doc", "public", "search_cache", "updated_ts")

    def __init__(self, doc: dict[str, Any], created_ts: float, updated_ts: float, *, ordered: bool = False) -> None:
        if not ordered:
            doc = {k: doc[k] for k in FIELD_ORDER if k in doc and doc[k] is not None}
        self.doc = doc
        self.created_ts = created_ts
        self.updated_ts = updated_ts
        self.search_cache: dict[str, str] | None = None  # normalised email/phone, filled by the first search
        self.public = any(doc.get(f) for f in PUBLIC_FIELDS)
        self.dkey = (default_sort_text(doc), doc["id"])
        self.ckey = (doc["created_at"], doc["id"])

    @property
    def raw(self) -> bytes:
        """Serialised on demand: orjson is fast enough, and not caching the bytes saves memory (docs/performance.md)."""
        return orjson.dumps(self.doc)

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def version(self) -> int:
        return int(self.doc["version"])


def default_sort_text(doc: dict[str, Any]) -> str:
    """Given+family name; else company, email, phone (documented DEFAULT order). Case-insensitive."""
    name = " ".join(p for p in (doc.get("given_name"), doc.get("family_name")) if p)
    for candidate in (name, doc.get("company_name"), doc.get("email_address"), doc.get("phone_number")):
        if candidate:
            return str(candidate).casefold()
    return ""
