"""The reference pages agree with the code, both ways, and every link in the docs resolves.

Generated reference pages would drift from their prose; hand-written ones drift from the code. These tests keep
the hand-written ones true: every environment variable ``Settings`` reads (and its default), every metric of the
registries (type and labels), every command and flag of the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from square_mirror.cli import PASSTHROUGH, build_parser
from square_mirror.settings import Settings
from tests.docs_examples import DOCS, ROOT, USER_FACING, anchors, links, sections

REFERENCE = DOCS / "reference"


# Configuration -----------------------------------------------------------------------------------------------

class _RecordingEnvironment(dict[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)


def _variables_read_by_settings() -> set[str]:
    environment = _RecordingEnvironment()
    Settings.from_env(environment)
    return environment.asked


def _documented_variables() -> dict[str, str]:
    """variable -> its default cell, from the configuration reference's table."""
    text = (REFERENCE / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|.*\| ([^|]+) \|$", text, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_the_configuration_reference_documents_every_variable_settings_reads_and_no_other() -> None:
    read = _variables_read_by_settings()
    documented = set(_documented_variables())
    assert len(read) > 20  # the recording environment really saw Settings ask
    assert read - documented == set(), "read by Settings but missing from docs/reference/configuration.md"
    assert documented - read == set(), "documented in docs/reference/configuration.md but read by nothing"


def _as_documented(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_documented_default_is_the_code_default() -> None:
    defaults = Settings()
    checked = 0
    for variable, cell in _documented_variables().items():
        field = variable.lower()
        if not hasattr(defaults, field):
            continue  # a variable that is not one field (a key list, a file holding a token)
        value = getattr(defaults, field)
        if value is None:
            assert cell.startswith("none"), f"{variable}: the code has no default, the docs say {cell!r}"
        else:
            shown = re.match(r"`([^`]*)`", cell)
            assert shown is not None, f"{variable}: no default in {cell!r}"
            assert shown.group(1) == _as_documented(value), f"{variable}: the code's default is {value!r}"
        checked += 1
    assert checked > 20


# Metrics -----------------------------------------------------------------------------------------------------

def _exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """Metric name as scraped (counters with ``_total``) -> (type, label names)."""
    import prometheus_client
    from prometheus_client.metrics import MetricWrapperBase

    from webhooks.metrics import WebhookMetrics

    # import_module, not ``import square_mirror.metrics``: another test may have deleted the package attribute.
    modules = [importlib.import_module(name) for name in ("square_mirror.metrics", "worker.metrics")]
    receiver = WebhookMetrics()
    receiver.observe_request("enqueued", "customer.updated", 0.001)  # its custom collector has samples only then
    wrappers = [v for module in modules for v in vars(module).values() if isinstance(v, MetricWrapperBase)]
    wrappers += [v for v in vars(receiver).values() if isinstance(v, MetricWrapperBase)]
    label_names = {w._name: set(w._labelnames) for w in wrappers}
    exported: dict[str, tuple[str, set[str]]] = {}
    for registry in (prometheus_client.REGISTRY, receiver.registry):
        for family in registry.collect():
            if not family.name.startswith("square_mirror_"):
                continue
            labels = label_names.get(family.name)
            if labels is None:
                labels = {name for sample in family.samples for name in sample.labels} - {"le"}
            name = family.name + "_total" if family.type == "counter" else family.name
            exported[name] = (family.type, labels)
    return exported


def _documented_metrics() -> dict[str, tuple[str, set[str]]]:
    text = (REFERENCE / "metrics.md").read_text()
    rows = re.findall(r"^\| `(square_mirror_\w+)` \| (\w+) \|([^|]*)\|", text, flags=re.MULTILINE)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_the_metrics_reference_lists_exactly_the_exported_metrics_with_their_types_and_labels() -> None:
    exported = _exported_metrics()
    documented = _documented_metrics()
    assert len(exported) >= 15
    assert set(exported) - set(documented) == set(), "exported but missing from docs/reference/metrics.md"
    assert set(documented) - set(exported) == set(), "documented in docs/reference/metrics.md but not exported"
    for name, (kind, labels) in exported.items():
        assert documented[name] == (kind, labels), f"{name}: the code says {kind} with labels {sorted(labels)}"


# CLI ---------------------------------------------------------------------------------------------------------

def _subcommands(name: str, parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``name`` and every command under it (``square-mirror sellers add``), at any depth."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sub_parser in action.choices.items():
                found.update(_subcommands(f"{name} {sub}", sub_parser))
    return found


def _commands() -> dict[str, argparse.ArgumentParser]:
    commands = _subcommands("square-mirror", build_parser())
    assert len(commands) > 1, "no subcommands"
    return commands


def _cli_sections() -> dict[str, str]:
    found = {}
    for title, body in sections(REFERENCE / "cli.md", 2).items():
        match = re.fullmatch(r"`(square-mirror(?: [a-z-]+){0,2})`", title)
        if match:
            found[match.group(1)] = body
    return found


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_cli_reference_documents_every_command_and_flag() -> None:
    commands = _commands()
    documented = _cli_sections()
    assert set(commands) - set(documented) == set(), "commands missing from docs/reference/cli.md"
    assert set(documented) - set(commands) == set(), "docs/reference/cli.md documents commands that do not exist"
    for name, parser in commands.items():
        if name.split()[-1] in PASSTHROUGH:
            continue  # parses its own arguments (see its README)
        body = documented[name]
        long_flags = {flag for flag in _flags(parser) if flag.startswith("--")}
        missing = {flag for flag in long_flags - {"--help"} if not re.search(rf"`{re.escape(flag)}\b", body)}
        assert missing == set(), f"{name}: flags not documented"
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", body))
        assert named - long_flags == set(), f"{name}: its section names flags it does not have"


# Links, and words about how the project was made -------------------------------------------------------------

def _link_targets() -> Iterator[tuple[Path, str]]:
    for path in [*USER_FACING, ROOT / "SECURITY.md", ROOT / "emulator" / "README.md"]:
        for target in links(path):
            yield path, target


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for path, target in _link_targets():
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


_PROCESS_WORDS = re.compile(
    r"\b(final code|last run|the helper|(this|previous|second|last|earlier|next) sessions?|the session (before|after)"
    r"|sessions? ago)\b",
    flags=re.IGNORECASE)


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_facing_text_does_not_speak_of_how_the_project_was_developed(path: Path) -> None:
    found = [m.group(0) for m in _PROCESS_WORDS.finditer(path.read_text())]
    assert found == []


# The README's rule table -------------------------------------------------------------------------------------

def _rule_homes() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Where each rule lives:", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rule ")]
    assert len(rows) >= 10
    return [row.rsplit(" | ", 1)[1] for row in rows]


def test_every_place_the_rule_table_names_exists() -> None:
    schema = (ROOT / "schema.sql").read_text()
    missing = []
    for home in _rule_homes():
        for token in re.findall(r"`([^`]+)`", home):
            if token.startswith("square."):
                if not re.search(rf"(FUNCTION|VIEW) {re.escape(token)}\b", schema):
                    missing.append(token)
                continue
            path, _, name = token.partition(": ")
            if "/" not in path and not path.endswith((".py", ".sql")):
                continue
            file = ROOT / path
            if "/" not in path and not file.exists():
                file = ROOT / "square_mirror" / path  # "(default version in `constants.py`)"
            if not file.exists():
                missing.append(token)
                continue
            for part in re.split(r" / ", name) if name else []:
                if not re.search(rf"\b(def|class) {re.escape(part)}\b", file.read_text()):
                    missing.append(token)
    assert missing == [], "the README's rule table names places that do not exist"
