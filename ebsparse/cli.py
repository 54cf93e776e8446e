"""The ``ebsparse`` command (front layer). Each subcommand is a module of :mod:`ebsparse.commands`
(``NAME``, ``HELP``, ``configure(parser)``, ``run(args) -> int``); this module registers them in
:data:`COMMANDS` and parses the command line. Adding a subcommand means adding its module to
``ebsparse.commands.MODULES``; :func:`register` adds one from elsewhere (plugins, tests).

Heavy imports (torch, the models) happen inside the ``run`` functions so that ``ebsparse --help``
stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Command", "COMMANDS", "register", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand; registering a name twice is a programming error."""
    if name in COMMANDS:
        raise ValueError(f"ebsparse subcommand {name!r} is already registered")
    COMMANDS[name] = Command(name, help, configure, run)


def _register_commands() -> None:
    from . import commands

    for name in commands.MODULES:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        register(module.NAME, module.HELP, module.configure, module.run)


_register_commands()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebsparse", description="Sparse training of diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (on a busy machine, 1 is often fastest)")
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors (bad config, missing file) print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, ImportError) as e:
        print(f"ebsparse {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
