"""Realistic, deterministic customer directories: names, emails, E.164 phones, addresses, groups,
segments, spread-out timestamps. Built for speed (200k profiles in seconds): records are created
directly and the index is rebuilt once, and seeding fires no webhooks (it is history, not activity).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from . import clock
from .attribute_seeding import seed_attributes
from .records import CustomerRec
from .state import MerchantState

GIVEN = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
         "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Carlos", "Karen",
         "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Betty", "Mark", "Sandra", "Steven", "Ashley", "Wei",
         "Aisha", "Hiroshi", "Olga", "Mateo", "Zoe", "Noah", "Amara", "Liam", "Priya")
FAMILY = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
          "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
          "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Murray",
          "Nguyen", "Chen", "Okafor", "Kowalski", "Tanaka", "Ivanova", "Rossi")
COMPANIES = ("Acme Corp", "Blue Bottle", "Globex", "Initech", "Umbrella LLC", "Stark Industries", "Hooli",
             "Vandelay Imports", "Wayne Enterprises", "Soylent Co")
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.com", "icloud.com", "fastmail.com")
STREETS = ("Main St", "Oak Ave", "Pine St", "Maple Dr", "Cedar Ln", "Elm St", "Market St", "Mission St")
CITIES = (("San Francisco", "CA", "941"), ("New York", "NY", "100"), ("Austin", "TX", "787"),
          ("Seattle", "WA", "981"), ("Chicago", "IL", "606"), ("Oakland", "CA", "946"))
AREA_CODES = ("415", "212", "512", "206", "312", "510", "646", "551")
SOURCES = ("THIRD_PARTY", "DIRECTORY", "IMPORT", "ONLINE_STORE", "APPOINTMENTS", "LOYALTY", "INSTANT_PROFILE")
SEGMENT_NAMES = ("REACHABLE", "LOYAL", "CHURN_RISK", "CARDS_ON_FILE", "LUNCH_REGULARS")
YEAR = 365 * 24 * 3600
T = TypeVar("T")
# Shared immutable values: records are never mutated in place, so sharing saves memory at 200k profiles.
PREFS_SUBSCRIBED = {"email_unsubscribed": False}
PREFS_UNSUBSCRIBED = {"email_unsubscribed": True}


def seed_merchant(state: MerchantState, *, customers: int, groups: int | None = None, segments: int | None = None,
                  instant_profiles: int = 0, seed: int | None = None,
                  custom_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add ``customers`` realistic profiles (plus groups/segments and, with ``custom_attributes``, custom attribute
    definitions and values: ``attribute_seeding.py``) to one seller, without events."""
    rng = random.Random(f"seed:{state.merchant_id}:{seed if seed is not None else 0}:{len(state.customers)}")
    attr_rng = random.Random(f"attributes:{state.merchant_id}:{seed if seed is not None else 0}:{len(state.customers)}")
    total = customers + instant_profiles
    n_groups = groups if groups is not None else (min(5, max(1, total // 20)) if total else 0)
    n_segments = segments if segments is not None else (3 if total else 0)
    state.quiet = True
    try:
        group_ids = [state.create_group(f"{rng.choice(('VIP', 'Newsletter', 'Wholesale', 'Staff', 'Event'))} "
                                        f"{i + 1}", None)["id"] for i in range(n_groups)]
        segment_ids = []
        for i in range(n_segments):
            name = SEGMENT_NAMES[i % len(SEGMENT_NAMES)]
            sid = f"{state.merchant_id}.{name}" if i < len(SEGMENT_NAMES) else f"gv2:{clock.new_id(rng)}"
            if sid in state.segments:
                sid = f"gv2:{clock.new_id(rng)}"
            segment_ids.append(state.create_segment(name.replace("_", " ").title(), sid)["id"])
        now = clock.now()
        ids: set[str] = set(state.customers) | set(state.tombstones)
        new_recs: list[CustomerRec] = []
        random_ = rng.random

        def choice(seq: Sequence[T]) -> T:
            return seq[int(random_() * len(seq))]

        def randrange(lo: int, hi: int) -> int:
            return lo + int(random_() * (hi - lo))

        def add_memberships(doc: dict[str, Any], cid: str) -> None:
            if group_ids and random_() < 0.3:
                doc["group_ids"] = sorted(rng.sample(group_ids, rng.randint(1, min(2, len(group_ids)))))
                for gid in doc["group_ids"]:
                    state.group_members[gid].add(cid)
            if segment_ids and random_() < 0.5:
                doc["segment_ids"] = sorted(rng.sample(segment_ids, rng.randint(1, len(segment_ids))))
                for sid in doc["segment_ids"]:
                    state.segment_members[sid].add(cid)

        for n in range(customers + instant_profiles):
            cid = clock.new_id(rng)
            while cid in ids:
                cid = clock.new_id(rng)
            ids.add(cid)
            created = now - random_() * 3 * YEAR
            updated = created + random_() * (now - created)
            version = int(random_() * 4) if updated > created + 1 else 0
            doc: dict[str, Any] = {"id": cid, "created_at": clock.rfc3339_ms(created),
                                   "updated_at": clock.rfc3339_s(updated)}
            if n >= customers:
                # An instant profile without public information: never listed or searched, but it can be in
                # groups and segments like any other profile (Retrieve/BulkRetrieve show them).
                doc.update(preferences=PREFS_SUBSCRIBED, creation_source="INSTANT_PROFILE")
                add_memberships(doc, cid)
                doc["version"] = version
                new_recs.append(CustomerRec(doc, created, float(int(updated)), ordered=True))
                continue
            given, family = choice(GIVEN), choice(FAMILY)
            r = random_()
            if r < 0.9:
                doc["given_name"] = given
                doc["family_name"] = family
            elif r < 0.95:
                doc["company_name"] = choice(COMPANIES)
            if random_() < 0.85:
                doc["email_address"] = f"{given.lower()}.{family.lower()}{n}@{choice(DOMAINS)}"
            want_phone = random_() < 0.8 or len(doc) == 3  # every seeded profile has public info
            if random_() < 0.6:  # keys are inserted in Square's field order (FIELD_ORDER)
                city, region, zip3 = choice(CITIES)
                doc["address"] = {"address_line_1": f"{randrange(1, 9999)} {choice(STREETS)}",
                                  "locality": city, "administrative_district_level_1": region,
                                  "postal_code": f"{zip3}{randrange(10, 99)}", "country": "US"}
            if want_phone:
                doc["phone_number"] = f"+1{choice(AREA_CODES)}{randrange(2000000, 9999999)}"
            if random_() < 0.2:
                doc["birthday"] = f"{choice(('0000', str(randrange(1950, 2005))))}-" \
                                  f"{randrange(1, 13):02d}-{randrange(1, 29):02d}"
            if random_() < 0.3:
                doc["reference_id"] = f"{choice(('NYC', 'SF', 'ATX'))}_{n}_{family.upper()}"
            doc["preferences"] = PREFS_UNSUBSCRIBED if random_() < 0.05 else PREFS_SUBSCRIBED
            doc["creation_source"] = choice(SOURCES[:6])
            add_memberships(doc, cid)
            doc["version"] = version
            new_recs.append(CustomerRec(doc, created, float(int(updated)), ordered=True))
        for rec in new_recs:
            state.customers[rec.id] = rec
        attributes = seed_attributes(state, new_recs, custom_attributes, attr_rng) if custom_attributes else None
        state.reindex()
    finally:
        state.quiet = False
    result = {"merchant_id": state.merchant_id, "customers": customers, "instant_profiles": instant_profiles,
              "groups": group_ids, "segments": segment_ids}
    if attributes is not None:
        result["custom_attributes"] = attributes
    return result
