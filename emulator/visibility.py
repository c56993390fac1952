"""Who sees which custom attribute definition, and under which key (FACTS-2 A.1).

Internally every definition and value is filed under its **qualified key** ``{owner}:{simple key}``: the owner is
an application ID (``sq0idp-…``) or ``square`` for the seller's own custom fields made in the Dashboard
(``square:{uuid}``, always ``VISIBILITY_READ_WRITE_VALUES``). An application sees its own definitions (at any
visibility) under their simple key, and other owners' ``VISIBILITY_READ_ONLY`` / ``VISIBILITY_READ_WRITE_VALUES``
definitions under their qualified key; other owners' ``VISIBILITY_HIDDEN`` definitions and their values do not
exist for it.
"""

from __future__ import annotations

import re

HIDDEN, READ_ONLY, READ_WRITE_VALUES = "VISIBILITY_HIDDEN", "VISIBILITY_READ_ONLY", "VISIBILITY_READ_WRITE_VALUES"
VISIBILITIES = (HIDDEN, READ_ONLY, READ_WRITE_VALUES)
SELLER = "square"  # the owner of the seller's own custom fields
SIMPLE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,60}$")
ANY_KEY = re.compile(r"^([A-Za-z0-9._-]+:)?[A-Za-z0-9._-]{1,60}$")  # the spec's pattern: simple or qualified


def qualify(owner: str, key: str) -> str:
    return f"{owner}:{key}"


def owner_of(qualified: str) -> str:
    """The owner of a qualified key: the text before its last ``:`` (simple keys cannot contain one)."""
    return qualified.rsplit(":", 1)[0]


def simple_of(qualified: str) -> str:
    return qualified.rsplit(":", 1)[-1]


def internal_key(key: str, viewer: str) -> str:
    """The qualified key a caller means: a simple key is the caller's own, a qualified one is taken as is."""
    return key if ":" in key else qualify(viewer, key)


def seen_key(qualified: str, viewer: str) -> str:
    """The key as ``viewer`` sees it: simple for its own definitions, qualified for everyone else's."""
    return simple_of(qualified) if owner_of(qualified) == viewer else qualified


def visible(visibility: str, qualified: str, viewer: str) -> bool:
    return visibility != HIDDEN or owner_of(qualified) == viewer


def values_writable(visibility: str, qualified: str, viewer: str) -> bool:
    """Values of other owners' definitions are writable only when ``VISIBILITY_READ_WRITE_VALUES``."""
    return visibility == READ_WRITE_VALUES or owner_of(qualified) == viewer
