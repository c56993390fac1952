"""There is no Docker engine or cluster here, so check instead that every deployment file parses and that every
command, flag and environment variable it names exists in the code."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from square_mirror.cli import COMMANDS, PASSTHROUGH, build_parser

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SETTINGS_SOURCE = (ROOT / "square_mirror" / "settings.py").read_text()
KNOWN_ENV = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', SETTINGS_SOURCE))
# Variables read by images we do not build (the official postgres image).
FOREIGN_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _check_invocation(argv: list[str], where: str) -> None:
    assert argv, f"{where}: empty command"
    command, flags = argv[0], argv[1:]
    if command in PASSTHROUGH or command in ("--help", "--version"):
        return
    assert command in COMMANDS, f"{where}: square-mirror {command} is not a command"
    parser = _subparsers()[command]
    known = {opt for action in parser._actions for opt in action.option_strings}
    for flag in flags:
        if flag.startswith("--"):
            assert flag.split("=")[0] in known, f"{where}: square-mirror {command} has no flag {flag}"
    parser.parse_args(flags)  # values must parse too


def _yaml_documents(path: Path) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _compose() -> dict[str, object]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_manifest_parses() -> None:
    assert _compose()["services"]
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs = _yaml_documents(path)
        assert docs, path
        assert all("kind" in doc and "apiVersion" in doc for doc in docs), path


def test_compose_commands_and_environment_exist_in_the_code() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    for name, service in services.items():
        if service.get("image") != "square-mirror" and "build" not in service:
            continue
        _check_invocation(list(service["command"]), f"compose {name}")
        for variable in service.get("environment", {}):
            assert variable in KNOWN_ENV, f"compose {name}: {variable} is not a setting"


def _containers(doc: dict[str, object]) -> list[dict[str, object]]:
    spec: object = doc.get("spec", {})
    found: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                found.extend(node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def test_kubernetes_commands_settings_and_probes_exist() -> None:
    seen_probes: set[str] = set()
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _yaml_documents(path):
            if doc["kind"] in ("ConfigMap", "Secret"):
                data = doc.get("data") or doc.get("stringData") or {}
                assert isinstance(data, dict)
                for variable in data:
                    assert variable in KNOWN_ENV, f"{path.name}: {variable} is not a setting"
            for container in _containers(doc):
                _check_invocation(list(container["args"]), f"{path.name} {container['name']}")
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe in container:
                        seen_probes.add(container[probe]["httpGet"]["path"])
    assert {"/healthz", "/readyz"} <= seen_probes


def test_worker_grace_period_covers_the_job_drain() -> None:
    from square_mirror.settings import Settings

    defaults = Settings()
    worker = _yaml_documents(DEPLOY / "k8s" / "worker.yaml")[0]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]  # type: ignore[index]
    assert grace > defaults.worker_shutdown_grace_seconds + defaults.worker_job_timeout_seconds


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_run_real_commands(unit: Path) -> None:
    for line in unit.read_text().splitlines():
        if line.startswith(("ExecStart=", "ExecStartPre=")):
            argv = shlex.split(line.split("=", 1)[1])
            assert argv[0].endswith("/square-mirror")
            _check_invocation(argv[1:], unit.name)
        if line.startswith("Environment=") and "=" in line[len("Environment="):]:
            assert line[len("Environment="):].split("=")[0] in KNOWN_ENV


def test_systemd_environment_example_names_only_settings() -> None:
    for line in (DEPLOY / "systemd" / "square-mirror.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            assert line.split("=")[0] in KNOWN_ENV
