"""Realistic, deterministic custom attributes for seeded directories (the admin seed's ``custom_attributes``).

Definitions cycle through every data type (String, Email, PhoneNumber, Number, Boolean, Date, Address, Selection)
and through owners: the application itself (READ_WRITE_VALUES, READ_ONLY, HIDDEN in turn), another application
(READ_ONLY / READ_WRITE_VALUES in turn) and the seller's Dashboard (``square:{uuid}``); ``hidden`` more definitions
of the other application are HIDDEN (invisible to the application). Then ``share`` of the seeded profiles get values
for ``min``..``max`` of the visible definitions (and, with the same share, for each hidden one). Values are written
straight into the store without events, like the rest of seeding, so 100,000 profiles take seconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import clock
from .attribute_values import TYPES, AttrValue, schema_for, selection_schema
from .records import CustomerRec
from .state import MerchantState
from .visibility import HIDDEN, READ_ONLY, READ_WRITE_VALUES, SELLER, qualify

OTHER_APPLICATION_ID = "sq0idp-emulator-partner-app"
NAMES = {"String": ("favorite-drink", "Favorite drink"), "Email": ("backup-email", "Backup email"),
         "PhoneNumber": ("mobile", "Mobile phone"), "Number": ("visits", "Visits"), "Boolean": ("vip", "VIP"),
         "Date": ("anniversary", "Anniversary"), "Address": ("shipping-address", "Shipping address"),
         "Selection": ("shirt-size", "Shirt size")}
OWNERS = ("app", "other", "seller", "app")  # definition i is owned by OWNERS[i % 4]
APP_VISIBILITIES = (READ_WRITE_VALUES, READ_ONLY, HIDDEN)
OTHER_VISIBILITIES = (READ_ONLY, READ_WRITE_VALUES)
DRINKS = ("Flat white", "Double-shot breve", "Oat latte", "Cold brew", "Matcha", "Espresso", "Chai")
SIZES = ("XS", "S", "M", "L", "XL")
STREETS = ("Main St", "Oak Ave", "Pine St", "Market St")
CITIES = (("San Francisco", "CA", "94103"), ("Austin", "TX", "78701"), ("Seattle", "WA", "98101"))
YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class SeedParams:
    """``{definitions, share, min, max, hidden?, other_application_id?}``: defaults 8, 0.3, 1, 5, 0."""

    definitions: int = 8
    share: float = 0.3
    low: int = 1
    high: int = 5
    hidden: int = 0
    other_application_id: str = OTHER_APPLICATION_ID

    @classmethod
    def parse(cls, spec: Any) -> SeedParams:
        if not isinstance(spec, dict):
            raise ValueError("`custom_attributes` must be an object")
        params = cls(int(spec.get("definitions", 8)), float(spec.get("share", 0.3)), int(spec.get("min", 1)),
                     int(spec.get("max", 5)), int(spec.get("hidden", 0)),
                     str(spec.get("other_application_id") or OTHER_APPLICATION_ID))
        if params.definitions < 0 or params.hidden < 0 or not 0 <= params.share <= 1 \
                or not 0 <= params.low <= params.high:
            raise ValueError("`custom_attributes` needs definitions >= 0, hidden >= 0, 0 <= share <= 1, "
                             "0 <= min <= max")
        return params


def _free_key(state: MerchantState, owner: str, key: str) -> str:
    n, candidate = 1, key
    while qualify(owner, candidate) in state.attributes.definitions:
        n += 1
        candidate = f"{key}-{n}"
    return candidate


def _definition(state: MerchantState, i: int, rng: random.Random, other: str, ts: str) -> dict[str, Any]:
    kind = TYPES[i % len(TYPES)]
    key, name = NAMES[kind]
    if i >= len(TYPES):
        key, name = f"{key}-{i // len(TYPES) + 1}", f"{name} {i // len(TYPES) + 1}"
    role = OWNERS[i % len(OWNERS)]
    if role == "seller":
        owner, key, visibility = SELLER, clock.new_uuid(rng), READ_WRITE_VALUES
    elif role == "other":
        owner, visibility = other, OTHER_VISIBILITIES[(i // len(OWNERS)) % len(OTHER_VISIBILITIES)]
    else:
        owner, visibility = state.attributes.app_id, APP_VISIBILITIES[(i // 2) % len(APP_VISIBILITIES)]
    key = _free_key(state, owner, key)
    if kind == "Selection":
        schema = selection_schema([clock.new_uuid(rng) for _ in SIZES], list(SIZES), 1 + i % 2)
    else:
        schema = schema_for(kind)
    return {"key": qualify(owner, key), "schema": schema, "name": name, "description": f"{name} (seeded)",
            "visibility": visibility, "version": 1, "updated_at": ts, "created_at": ts}


def _value(kind: str, schema: dict[str, Any], rng: random.Random, n: int) -> Any:
    r = rng.random
    if kind == "String":
        return DRINKS[int(r() * len(DRINKS))]
    if kind == "Email":
        return f"backup{n}@example.com"
    if kind == "PhoneNumber":
        return f"+1415{2000000 + int(r() * 7999999)}"
    if kind == "Number":
        return str(int(r() * 200)) if r() < 0.7 else f"{r() * 1000:.2f}"
    if kind == "Boolean":
        return r() < 0.5
    if kind == "Date":
        return f"{1990 + int(r() * 35)}-{1 + int(r() * 12):02d}-{1 + int(r() * 28):02d}"
    if kind == "Address":
        city, region, postal = CITIES[int(r() * len(CITIES))]
        return {"address_line_1": f"{1 + int(r() * 9998)} {STREETS[int(r() * len(STREETS))]}", "locality": city,
                "administrative_district_level_1": region, "postal_code": postal, "country": "US"}
    options = schema["items"]["enum"]
    return rng.sample(options, 1 + int(r() * schema.get("maxItems", 1)))


def seed_attributes(state: MerchantState, recs: Sequence[CustomerRec], spec: Any, rng: random.Random) -> dict[str, Any]:
    """Create the definitions, then values for ``share`` of ``recs``; returns what was made."""
    params = SeedParams.parse(spec)
    other = params.other_application_id
    store = state.attributes
    now = clock.now()
    def_ts = clock.rfc3339_ms(now - 3 * YEAR - 86400)  # before every seeded profile
    made = [_definition(state, i, rng, other, def_ts) for i in range(params.definitions)]
    for i in range(params.hidden):
        key = _free_key(state, other, f"internal-score-{i + 1}" if i else "internal-score")
        made.append({"key": qualify(other, key), "schema": schema_for("Number"),
                     "name": f"Internal score {i + 1}", "description": "Another application's private data",
                     "visibility": HIDDEN, "version": 1, "updated_at": def_ts, "created_at": def_ts})
    for definition in made:
        store.definitions[definition["key"]] = definition
    # The first `definitions` are all visible to the application (its own at any visibility, the others' never
    # HIDDEN); the `hidden` ones after them are not.
    visible = [(d["key"], TYPES[i % len(TYPES)], d["schema"]) for i, d in enumerate(made[:params.definitions])]
    hidden = [(d["key"], "Number", d["schema"]) for d in made[params.definitions:]]
    share, low, high = params.share, params.low, min(params.high, len(visible))
    count = 0
    for n, rec in enumerate(recs):
        if rng.random() >= share:
            continue
        chosen = rng.sample(visible, min(high, low + int(rng.random() * (high - low + 1)))) if visible else []
        chosen += [h for h in hidden if rng.random() < share]
        if not chosen:
            continue
        held = store.values.setdefault(rec.id, {})
        for qkey, kind, schema in chosen:
            created = rec.created_ts + rng.random() * (now - rec.created_ts)
            updated = created + rng.random() * (now - created) if rng.random() < 0.5 else created
            created_at, updated_at = clock.rfc3339_ms(created), clock.rfc3339_ms(updated)
            version = 1 if updated == created else 2 + int(rng.random() * 3)
            held[qkey] = AttrValue(_value(kind, schema, rng, n), version, created_at, updated_at,
                                   clock.parse_rfc3339(updated_at))
            count += 1
    return {"definitions": [d["key"] for d in made], "values": count}
