"""Development tooling: starting and stopping the pipeline's processes for the demo, the tests and the benchmarks.

Nothing here runs in production. :class:`Stack` starts real processes (``python -m square_mirror ...``) and stops
them all, whatever happened; :func:`wait_for` waits for one to come up; :class:`EmulatorClient` talks to the Square
emulator as a seller's app would, plus its admin API. ``square-mirror demo``, ``tests/acceptance``,
``tests/chaos`` and ``bench/`` build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from square_mirror.constants import DEFAULT_SQUARE_VERSION
from square_mirror.embedded import EmbeddedPostgres, EmbeddedRedis


@dataclass
class Stack:
    """Every process (and embedded server) started, so that it can all be stopped, whatever happened."""

    workdir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, proc))
        return proc

    def stop(self) -> None:
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, proc in reversed(self.processes):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for server in reversed(self.embedded):
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def emulator_args(port: int, seed: int, customers: int, hook_url: str, signature_key: str, *,
                  custom_attributes: str | None = None) -> list[str]:
    """The emulator's command line. The key goes as ``--signature-key=KEY``: a random URL-safe key starts with
    ``-`` one time in 64, and argparse would read ``--signature-key -xyz`` as a missing value (exit code 2).
    ``custom_attributes``: the emulator's seeding of custom attributes (JSON), if any."""
    args = ["emulator", "--port", str(port), "--seed", str(seed), "--customers", str(customers),
            "--webhook-url", hook_url, f"--signature-key={signature_key}"]
    if custom_attributes is not None:
        args.append(f"--custom-attributes={custom_attributes}")
    return args


def cli_command(*args: str) -> list[str]:
    """The argv that runs ``square-mirror ARGS...`` with this interpreter."""
    return [sys.executable, "-m", "square_mirror", *args]


async def wait_for(
    predicate: Any, what: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``predicate`` (sync or async) every 0.1 s until it is true; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


class EmulatorClient:
    """The emulator through its public API (as a seller's app would call it) and its admin API."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, merchant_id: str) -> None:
        self.session, self.base_url, self.token, self.merchant_id = session, base_url, token, merchant_id

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Square-Version": DEFAULT_SQUARE_VERSION}
        async with self.session.request(method, self.base_url + path, json=body, headers=headers) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} {payload}")
            return payload

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        return await emulator_admin(self.session, self.base_url, method, path, body)


async def emulator_admin(session: aiohttp.ClientSession, base_url: str, method: str, path: str,
                         body: Any = None) -> Any:
    """One call to the emulator's admin API (``/_emulator``); a refusal raises with Square's answer."""
    async with session.request(method, f"{base_url}/_emulator{path}", json=body) as resp:
        payload = await resp.json(content_type=None)
        if resp.status >= 400:
            raise RuntimeError(f"admin {method} {path}: HTTP {resp.status} {payload}")
        return payload


async def run_cli(stack: Stack, name: str, args: Sequence[str], env: dict[str, str], timeout: float = 120) -> int:
    """Run one ``square-mirror`` command to completion under ``stack``; return its exit code."""
    proc = stack.start(name, cli_command(*args), env)
    try:
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    except TimeoutError:
        raise RuntimeError(f"{name} did not finish within {timeout:.0f} s") from None
