"""The `square-mirror` console script: one entry point that dispatches to each room's command module.

A command module exposes ``HELP``, ``configure(parser)`` and ``run(args) -> int`` (sync or async);
it is imported only when its command runs, so `square-mirror webhooks` never loads the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import Final

from square_mirror import __version__
from square_mirror.db import DatabaseUnavailable
from square_mirror.embedded import EmbeddedUnavailable
from square_mirror.settings import SettingsError

# command -> (module, one-line help). Modules own their flags.
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "migrate": ("square_mirror.commands.migrate", "apply schema.sql to DATABASE_URL (idempotent)"),
    "worker": ("worker.commands.worker", "run the sync worker (arq): webhook events to committed rows"),
    "redrive": ("worker.commands.redrive", "re-enqueue webhook events recorded as failed"),
    "webhooks": ("webhooks.cli", "run the Square webhook receiver (HTTP, queues events to Redis)"),
    "backfill": ("worker.commands.backfill", "copy every group, segment and customer; infer deletes and merges"),
    "reconcile": ("worker.commands.reconcile",
                  "run reconcile lanes once (incremental, segments, groups, events, sweep)"),
    "status": ("square_mirror.commands.status", "health per merchant; exit 1 when unhealthy (a probe)"),
    "demo": ("square_mirror.commands.demo", "the whole pipeline on embedded defaults, with a story and a check"),
    "prune-history": ("square_mirror.commands.prune_history", "delete closed history rows older than a period"),
    "sellers": ("worker.commands.sellers",
                "OAuth sellers: connect-url, add, list, remove [--purge], new-key, rotate-key"),
}
# Commands that parse their own argv (the emulator shares no code with the rest).
PASSTHROUGH: Final[dict[str, tuple[str, str]]] = {
    "emulator": ("emulator.cli", "run the local Square emulator (see emulator/README.md)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or with ``only`` just that command's flags (the others are listed by name).

    Importing every command module costs a noticeable share of a short command's CPU (arq, redis, aiohttp, ...),
    paid before the command starts (docs/performance.md, start-up). ``main`` passes the command it was given, so
    a run imports only its own module.
    """
    parser = argparse.ArgumentParser(
        prog="square-mirror",
        description="A live, exact Postgres mirror of Square Customer Directories.",
        epilog="Configuration comes from the environment; see the README's configuration table.",
    )
    parser.add_argument("--version", action="version", version=f"square-mirror {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=getattr(module, "HELP", help_text))
        module.configure(command)
        command.set_defaults(_module=module_name)
    for name, (_module_name, help_text) in PASSTHROUGH.items():
        command = sub.add_parser(name, help=help_text, add_help=False)
        command.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in PASSTHROUGH:
        module = importlib.import_module(PASSTHROUGH[args_list[0]][0])
        result: int = module.main(args_list[1:])
        return result
    parser = build_parser(args_list[0] if args_list and args_list[0] in COMMANDS else None)
    args = parser.parse_args(args_list)
    module = importlib.import_module(args._module)
    try:
        outcome = module.run(args)
        if inspect.isawaitable(outcome):
            outcome = asyncio.run(outcome)  # type: ignore[arg-type]
        return int(outcome or 0)
    except (SettingsError, DatabaseUnavailable, EmbeddedUnavailable) as exc:
        print(f"square-mirror: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
