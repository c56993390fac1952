"""The public contract, pinned: what analysts, operators and deployments rely on must not change by accident.

Like httpx's test of its exported members: every object in schema ``square`` (tables, views and their columns
with types, functions with their signatures), every CLI command's help text, every environment variable, every
metric name and the job payload's fields are compared with ``tests/data/public_contract.json``. A deliberate
change rewrites that file (``SQUARE_MIRROR_UPDATE_CONTRACT=1 ./dev test tests/integration/test_public_contract.py``)
and shows up in review as a diff of the contract itself.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from square_mirror.cli import build_parser
from tests.factories import event_job

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "tests" / "data" / "public_contract.json"

_SCHEMA_SQL = """
SELECT c.relname AS name, CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END AS kind,
       array_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'square' AND c.relkind IN ('r', 'v')
GROUP BY c.relname, c.relkind
ORDER BY c.relname
"""

_FUNCTIONS_SQL = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') -> ' || pg_get_function_result(p.oid)
       AS signature
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'square'
ORDER BY 1
"""


async def _schema(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_SCHEMA_SQL)
        relations = {r["name"]: {"kind": r["kind"], "columns": list(r["columns"])} for r in rows}
        functions = [r["signature"] for r in await conn.fetch(_FUNCTIONS_SQL)]
    finally:
        await conn.close()
    return {"relations": relations, "functions": functions}


def _cli() -> dict[str, str]:
    os.environ["COLUMNS"] = "120"  # argparse wraps help to the terminal's width
    parser = build_parser()
    helps: dict[str, str] = {}

    def collect(name: str, command: argparse.ArgumentParser) -> None:  # commands under commands too (sellers add)
        helps[name] = command.format_help()
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    collect(f"{name} {sub_name}", sub)

    collect("square-mirror", parser)
    return helps


def _environment() -> list[str]:
    source = (ROOT / "square_mirror" / "settings.py").read_text()
    return sorted(set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source)) - {"DEBUG", "INFO", "WARNING", "ERROR",
                                                                          "CRITICAL"})


def _metrics() -> list[str]:
    import importlib

    import prometheus_client

    for module in ("square_mirror.metrics", "worker.metrics"):  # registered in the default registry on import
        importlib.import_module(module)
    receiver = importlib.import_module("webhooks.metrics").WebhookMetrics()  # the receiver's own registry
    collected = [*prometheus_client.REGISTRY.collect(), *receiver.registry.collect()]
    return sorted({f"{m.name} {m.type}" for m in collected if m.name.startswith("square_mirror")})


def _job_payload() -> list[str]:
    return sorted(event_job(merchant_id="M", event_type="customer.deleted", event_id="E", customer_id="C", version=1,
                            created_at="2026-01-01T00:00:00Z", merge=(["C"], "D"),
                            received_at="2026-01-01T00:00:01Z", source="webhook"))


def _custom_attribute_job_payload() -> list[str]:
    """A custom-attribute event's payload: the same fields, and the ``object`` it carries (its fields as keys)."""
    from square_mirror.jobs import build_event_job
    from tests.factories import custom_attribute, custom_attribute_event

    payload = build_event_job(custom_attribute_event(custom_attribute(), customer_id="C", merchant_id="M",
                                                     event_id="E"), received_at="2026-01-01T00:00:01Z")
    return sorted(payload) + [f"object.{key}" for key in sorted(payload["object"])]


async def current_contract(dsn: str) -> dict[str, Any]:
    return {"schema": await _schema(dsn), "cli": _cli(), "environment": _environment(), "metrics": _metrics(),
            "job_payload": _job_payload(), "custom_attribute_job_payload": _custom_attribute_job_payload()}


async def test_the_public_contract_is_unchanged(db_dsn: str) -> None:
    current = json.loads(json.dumps(await current_contract(db_dsn)))
    if os.environ.get("SQUARE_MIRROR_UPDATE_CONTRACT") == "1":
        CONTRACT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        pytest.skip("contract rewritten")
    pinned = json.loads(CONTRACT.read_text())
    if current != pinned:
        diff = difflib.unified_diff(json.dumps(pinned, indent=1, sort_keys=True).splitlines(),
                                    json.dumps(current, indent=1, sort_keys=True).splitlines(),
                                    "pinned", "current", lineterm="", n=1)
        pytest.fail("the public contract changed:\n" + "\n".join(list(diff)[:200]))
