"""SearchCustomers filters and the documented tokenisation rules.

Rules reproduced from the CustomerFilter reference (seeds/004):
* email fuzzy: case-insensitive; punctuation (``.``, ``_``, ``@``...) is removed and the address is
  tokenised on spaces, so an address is one token; it matches when it contains every query token.
  ``Steven gmail`` matches ``steven.johnson@gmail.com``.
* phone fuzzy: digits only; every query token must occur in the stored number's digits.
  ``415`` matches +1-415-212-1200, +1-212-415-1234 and +1 (551) 234-1567; ``415 123`` matches the last
  two only.
* reference_id fuzzy: non-alphanumerics become spaces; every query token must be a prefix of some
  stored token (``NYC M`` matches NYC_M_35_JOHNSON and NYC_27_MURRAY; UNCONFIRMED: prefix, so
  NYC_27_SMITH does not match).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .clock import parse_rfc3339
from .errors import SquareError, bad_request, error
from .validation import e164, reject_unknown

_NON_ALNUM = re.compile(r"[^0-9a-z]+")

FILTER_FIELDS = frozenset(("creation_source", "created_at", "updated_at", "email_address", "phone_number",
                           "reference_id", "group_ids", "segment_ids", "custom_attribute"))
Predicate = Callable[[Any], bool]
CREATION_SOURCES = frozenset((
    "OTHER", "APPOINTMENTS", "COUPON", "DELETION_RECOVERY", "DIRECTORY", "EGIFTING", "EMAIL_COLLECTION", "FEEDBACK",
    "IMPORT", "INVOICES", "LOYALTY", "MARKETING", "MERGE", "ONLINE_STORE", "INSTANT_PROFILE", "TERMINAL",
    "THIRD_PARTY", "THIRD_PARTY_IMPORT", "UNMERGE_RECOVERY"))


class EmptyResult(Exception):
    """A filter that can never match (e.g. an unknown group ID): Square answers ``{}``."""


def email_blob(email: str) -> str:
    return _NON_ALNUM.sub("", email.lower())


def query_tokens(text: str, strip: bool = True) -> list[str]:
    tokens = []
    for raw in text.lower().split():
        tok = _NON_ALNUM.sub("", raw) if strip else raw
        if tok:
            tokens.append(tok)
    return tokens


def _cached(r: Any, kind: str) -> str:
    """Normalised email blob / phone digits of a record, computed once per record version."""
    cache = r.search_cache
    if cache is None:
        cache = r.search_cache = {}
    value: str | None = cache.get(kind)
    if value is None:
        if kind == "email":
            value = email_blob(r.doc.get("email_address") or "")
        else:
            value = "".join(c for c in r.doc.get("phone_number") or "" if c.isdigit())
        cache[kind] = value
    return value


def _email_tokens_pred(query: str) -> Predicate:
    tokens = query_tokens(query)
    return lambda r: bool(r.doc.get("email_address")) and all(t in _cached(r, "email") for t in tokens)


def _phone_tokens_pred(query: str) -> Predicate:
    tokens = [t for t in ("".join(c for c in tok if c.isdigit()) for tok in query.split()) if t]
    return lambda r: bool(tokens) and bool(r.doc.get("phone_number")) and all(t in _cached(r, "phone")
                                                                               for t in tokens)


def email_fuzzy(stored: str, query: str) -> bool:
    blob = email_blob(stored)
    return all(tok in blob for tok in query_tokens(query))


def phone_fuzzy(stored: str, query: str) -> bool:
    digits = "".join(c for c in stored if c.isdigit())
    tokens = ["".join(c for c in tok if c.isdigit()) for tok in query.split()]
    tokens = [t for t in tokens if t]
    return bool(tokens) and all(tok in digits for tok in tokens)


def reference_tokens(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def reference_fuzzy(stored: str, query: str) -> bool:
    stored_tokens = reference_tokens(stored)
    return all(any(s.startswith(q) for s in stored_tokens) for q in reference_tokens(query))


def text_filter(name: str, spec: Any) -> tuple[str | None, str | None]:
    if not isinstance(spec, dict):
        raise bad_request(f"Expected an object for `query.filter.{name}`.")
    for key in spec:
        if key not in ("exact", "fuzzy"):
            raise bad_request(f"The field named '{key}' is unrecognized", field=key)
    exact, fuzzy = spec.get("exact"), spec.get("fuzzy")
    if (exact is None) == (fuzzy is None):
        raise SquareError(400, [error("BAD_REQUEST", "Exactly one of `exact` or `fuzzy` must be set.",
                                      field=f"query.filter.{name}")])
    return exact, fuzzy


def time_range(name: str, spec: Any) -> tuple[float | None, float | None]:
    if not isinstance(spec, dict):
        raise bad_request(f"Expected an object for `query.filter.{name}`.")
    out: list[float | None] = []
    for key in ("start_at", "end_at"):
        value = spec.get(key)
        if value is None:
            out.append(None)
            continue
        try:
            out.append(parse_rfc3339(str(value)))
        except ValueError:
            raise SquareError(400, [error("INVALID_TIME", f"Invalid timestamp `{value}`.",
                                          field=f"query.filter.{name}.{key}")]) from None
    return out[0], out[1]


def _ids(spec: Any, name: str) -> tuple[set[str], set[str], set[str]]:
    if not isinstance(spec, dict):
        raise bad_request(f"Expected an object for `query.filter.{name}`.")
    parts = []
    for key in ("all", "any", "none"):
        value = spec.get(key) or []
        if not isinstance(value, list):
            raise bad_request(f"Expected an array for `query.filter.{name}.{key}`.")
        parts.append({str(v) for v in value})
    return parts[0], parts[1], parts[2]


def compile_filter(flt: Any, known_groups: set[str] | dict[str, Any], known_segments: set[str] | dict[str, Any],
                   raw: bytes, custom_attribute: Callable[[Any], list[Predicate]] | None = None,
                   ) -> list[Predicate]:
    """Turn a CustomerFilter into predicates over customer records; raise EmptyResult for ``{}``.

    ``custom_attribute`` compiles the ``custom_attribute`` part (``attribute_filter.py``: it needs the seller's
    definitions and the index's lagging copy of the values); without it that part is refused."""
    if flt is None:
        return []
    reject_unknown(flt, FILTER_FIELDS, raw)
    preds: list[Predicate] = []
    cs = flt.get("creation_source")
    if cs is not None:
        reject_unknown(cs, frozenset(("values", "rule")), raw)
        values = set(cs.get("values") or [])
        for value in sorted(values - CREATION_SOURCES):
            raise SquareError(400, [error("INVALID_ENUM_VALUE", f"`{value}` is not a valid enum value for "
                                          "`query.filter.creation_source.values`.",
                                          field="query.filter.creation_source.values")])
        if (cs.get("rule") or "INCLUDE") not in ("INCLUDE", "EXCLUDE"):
            raise SquareError(400, [error("INVALID_ENUM_VALUE", f"`{cs.get('rule')}` is not a valid enum value "
                                          "for `query.filter.creation_source.rule`.",
                                          field="query.filter.creation_source.rule")])
        include = (cs.get("rule") or "INCLUDE") == "INCLUDE"
        preds.append(lambda r: (r.doc.get("creation_source") in values) == include)
    for name, attr in (("created_at", "created_ts"), ("updated_at", "updated_ts")):
        if flt.get(name) is not None:
            start, end = time_range(name, flt[name])
            # UNCONFIRMED bounds: start inclusive, end exclusive.
            preds.append(_in_range(attr, start, end))
    if flt.get("email_address") is not None:
        exact, fuzzy = text_filter("email_address", flt["email_address"])
        if exact is not None:
            want = exact.strip().lower()
            preds.append(lambda r: (r.doc.get("email_address") or "").lower() == want)
        else:
            preds.append(_email_tokens_pred(str(fuzzy)))
    if flt.get("phone_number") is not None:
        exact, fuzzy = text_filter("phone_number", flt["phone_number"])
        if exact is not None:
            want_e164 = e164(exact) if exact.strip().startswith("+") else None
            if want_e164 is None:
                raise EmptyResult  # UNCONFIRMED: a non-E.164 exact query matches nothing
            preds.append(lambda r: bool(r.doc.get("phone_number")) and e164(r.doc["phone_number"]) == want_e164)
        else:
            preds.append(_phone_tokens_pred(str(fuzzy)))
    if flt.get("reference_id") is not None:
        exact, fuzzy = text_filter("reference_id", flt["reference_id"])
        if exact is not None:
            want = exact.lower()
            preds.append(lambda r: (r.doc.get("reference_id") or "").lower() == want)
        else:
            q = str(fuzzy)
            preds.append(lambda r: bool(r.doc.get("reference_id")) and reference_fuzzy(r.doc["reference_id"], q))
    if flt.get("group_ids") is not None:
        g_all, g_any, g_none = _ids(flt["group_ids"], "group_ids")
        if any(g not in known_groups for g in g_all | g_any | g_none):
            raise EmptyResult
        preds.append(_membership("group_ids", g_all, g_any, g_none))
    if flt.get("segment_ids") is not None:
        s_all, s_any, s_none = _ids(flt["segment_ids"], "segment_ids")
        if len(s_all) + len(s_any) + len(s_none) > 3:
            raise SquareError(400, [error("BAD_REQUEST", "A maximum of 3 segment IDs can be specified in the "
                                          "`segment_ids` filter.", field="query.filter.segment_ids")])
        for sid in sorted(s_all | s_any | s_none):
            if sid not in known_segments:
                raise SquareError(400, [error("BAD_REQUEST", f"Segment with ID `{sid}` not found.",
                                              field="query.filter.segment_ids")])
        preds.append(_membership("segment_ids", s_all, s_any, s_none))
    if flt.get("custom_attribute") is not None:
        if custom_attribute is None:
            raise bad_request("Custom attribute filters are not supported here.", field="query.filter.custom_attribute")
        preds.extend(custom_attribute(flt["custom_attribute"]))
    return preds


def _in_range(attr: str, start: float | None, end: float | None) -> Predicate:
    def pred(r: Any) -> bool:
        value: float = getattr(r, attr)
        return (start is None or value >= start) and (end is None or value < end)

    pred.range_attr = attr  # type: ignore[attr-defined]  # lets the index narrow updated_at ranges
    pred.range_start = start  # type: ignore[attr-defined]
    pred.range_end = end  # type: ignore[attr-defined]
    return pred


def _membership(field: str, all_: set[str], any_: set[str], none: set[str]) -> Predicate:
    def pred(r: Any) -> bool:
        have = set(r.doc.get(field) or ())
        if all_ and not all_ <= have:
            return False
        if any_ and not any_ & have:
            return False
        return not (none and none & have)

    return pred
