"""The ``textgen-rl`` command line.

Each subcommand lives in its own module of this package and contributes a ``register(subparsers)``
function that adds its parser and sets ``func`` to a callable taking the parsed arguments and
returning an exit code. Errors on bad input (any :class:`text_envs.errors.TextEnvsError`, and
:class:`CLIError`) print one line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from agents.cli.arguments import DefaultsHelpFormatter, OneLineParser
from text_envs.errors import TextEnvsError

#: Modules of this package that define subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = ("info", "train", "rlhf", "compare")


class CLIError(TextEnvsError, ValueError):
    """Bad command-line input; reported as one line with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """Return the ``textgen-rl`` argument parser with every subcommand registered."""
    parser = OneLineParser(
        prog="textgen-rl", description="Reinforcement learning on text: Gymnasium environments and SB3 agents.",
        formatter_class=DefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    for command in subparsers.choices.values():  # every subcommand's --help shows its defaults
        command.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textgen-rl`` console script."""
    # transformers' per-load "Loading weights" bars would bury the command's own progress bar and tables
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed as one line (2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (TextEnvsError, FileNotFoundError, PermissionError) as error:
        print(f"textgen-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"textgen-rl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
