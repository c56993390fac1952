"""SearchCustomers' ``custom_attribute`` filter (FACTS-2 A.4): up to 10 filters with unique keys, ANDed, each on
one definition the caller can see (keys as it sees them), with a type-specific value filter and/or an inclusive
``updated_at`` range. Values are read from the index's lagging copy (``CustomerIndex.attrs``), so a value set less
than ``index_lag_seconds`` ago is not found yet, and a deleted one still is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import bad_request
from .search import Predicate, email_fuzzy, phone_fuzzy, reference_fuzzy, text_filter, time_range
from .validation import reject_unknown

Check = Callable[[Any], bool]  # over one AttrValue (``.value``, ``.updated_ts``)
Resolve = Callable[[str], "tuple[str, dict[str, Any]] | None"]  # key as written -> (qualified key, definition)
FIELD = "query.filter.custom_attribute"


def attribute_predicates(spec: Any, resolve: Resolve, values: Mapping[str, Mapping[str, Any]],
                         raw: bytes) -> list[Predicate]:
    """One predicate per filter; each carries ``attr_key`` so the index walks only the profiles holding it."""
    reject_unknown(spec, frozenset(("filters",)), raw)
    filters = spec.get("filters") or []
    if not isinstance(filters, list) or len(filters) > 10:
        raise bad_request("`custom_attribute.filters` must be a list of at most 10 filters.", field=f"{FIELD}.filters")
    keys = [f.get("key") for f in filters if isinstance(f, dict)]
    if len(keys) != len(set(keys)):
        raise bad_request("Custom attribute filter keys must be unique.", field=FIELD)
    preds: list[Predicate] = []
    for item in filters:
        reject_unknown(item, frozenset(("key", "filter", "updated_at")), raw)
        key = item.get("key")
        found = resolve(key) if isinstance(key, str) and key else None
        if found is None:  # unknown, or another owner's HIDDEN definition: the same answer
            raise bad_request(f"Custom attribute definition with key `{key}` not found.", field=FIELD)
        qkey, definition = found
        if item.get("filter") is None and item.get("updated_at") is None:
            raise bad_request("Each custom attribute filter needs `filter` or `updated_at`.", field=FIELD)
        checks: list[Check] = []
        if item.get("updated_at") is not None:
            checks.append(_updated_check(*time_range("custom_attribute.updated_at", item["updated_at"])))
        if item.get("filter") is not None:
            checks.append(_value_check(item["filter"], definition))
        preds.append(_attr_pred(values, qkey, checks))
    return preds


def _updated_check(start: float | None, end: float | None) -> Check:
    """Both bounds inclusive (documented)."""
    return lambda a: (start is None or a.updated_ts >= start) and (end is None or a.updated_ts <= end)


def _attr_pred(values: Mapping[str, Mapping[str, Any]], key: str, checks: list[Check]) -> Predicate:
    def pred(r: Any) -> bool:
        held = values.get(r.doc["id"])
        attr = held.get(key) if held is not None else None
        return attr is not None and all(c(attr) for c in checks)

    pred.attr_key = key  # type: ignore[attr-defined]  # lets the index narrow to the profiles holding the key
    return pred


def _text_check(kind: str, value: Any) -> Check:
    exact, fuzzy = text_filter(kind, value)
    if exact is not None:
        want = str(exact).lower()
        return lambda a: isinstance(a.value, str) and a.value.lower() == want
    q = str(fuzzy)
    match = phone_fuzzy if kind == "phone" else email_fuzzy if kind == "email" else reference_fuzzy
    return lambda a: isinstance(a.value, str) and match(a.value, q)


def _number_check(value: Any) -> Check:
    spec = value if isinstance(value, dict) else {}
    lo = _num(spec.get("start_at"))
    hi = _num(spec.get("end_at"))

    def check(a: Any) -> bool:
        n = _num(a.value)
        return n is not None and (lo is None or n >= lo) and (hi is None or n <= hi)

    return check


def _date_check(value: Any) -> Check:
    spec = value if isinstance(value, dict) else {}
    lo, hi = spec.get("start_at"), spec.get("end_at")
    return lambda a: isinstance(a.value, str) and (lo is None or a.value >= str(lo)[:10]) \
        and (hi is None or a.value <= str(hi)[:10])


def _selection_check(value: Any, definition: dict[str, Any]) -> Check:
    """``any``/``all`` name options by their display names (case-sensitive); option UUIDs are accepted too."""
    spec = value if isinstance(value, dict) else {}
    items = (definition.get("schema") or {}).get("items") or {}
    by_name = dict(zip(items.get("names") or [], items.get("enum") or [], strict=False))
    any_ = {by_name.get(v, v) for v in spec.get("any") or []}
    all_ = {by_name.get(v, v) for v in spec.get("all") or []}
    return lambda a: isinstance(a.value, list) and (not any_ or bool(any_ & set(a.value))) and all_ <= set(a.value)


def _address_check(value: Any) -> Check:
    spec = value if isinstance(value, dict) else {}
    postal = (spec.get("postal_code") or {}).get("exact")
    country = spec.get("country")
    return lambda a: isinstance(a.value, dict) and (postal is None or a.value.get("postal_code") == postal) \
        and (country is None or a.value.get("country") == country)


def _value_check(spec: Any, definition: dict[str, Any]) -> Check:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise bad_request("A custom attribute value filter sets exactly one field.", field=f"{FIELD}.filter")
    kind, value = next(iter(spec.items()))
    if kind in ("text", "email", "phone"):
        return _text_check(kind, value)
    if kind == "boolean":
        return lambda a: a.value is bool(value)
    if kind == "number":
        return _number_check(value)
    if kind == "date":
        return _date_check(value)
    if kind == "selection":
        return _selection_check(value, definition)
    if kind == "address":
        return _address_check(value)
    raise bad_request(f"Unknown custom attribute filter `{kind}`.", field=f"{FIELD}.filter")


def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
