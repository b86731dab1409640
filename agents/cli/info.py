"""``textgen-rl models``, ``rewards``, ``tasks`` and ``responders``: what is available.

Each prints an aligned plain-text table, or JSON with ``--json``. Nothing is downloaded and no model
is loaded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render ``rows`` under ``headers`` as left-aligned columns separated by two spaces.

    :param headers: Column titles.
    :param rows: One sequence of cell values per row (converted with ``str``).
    :return: The table, without a trailing newline.
    """
    cells = [[str(h) for h in headers], *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _emit(args: argparse.Namespace, records: list[dict[str, Any]], headers: Sequence[str]) -> int:
    """Print ``records`` as JSON (``--json``) or as a table of the ``headers`` keys."""
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(format_table(headers, [[record[key] for key in headers] for record in records]))
    return 0


def run_models(args: argparse.Namespace) -> int:
    """List the model aliases and whether each loads offline."""
    from text_envs.models import model_availability

    records = [
        {
            "alias": status.alias,
            "available": "yes" if status.available else "no",
            "description": status.description,
            "detail": status.detail,
        }
        for status in model_availability()
    ]
    if args.json:
        for record in records:
            record["available"] = record["available"] == "yes"
    return _emit(args, records, ("alias", "available", "description", "detail"))


def run_rewards(args: argparse.Namespace) -> int:
    """List the registered reward models."""
    from text_envs.rewards import list_rewards

    records = [
        {"name": reward.name, "needs_targets": bool(reward.needs_targets), "description": reward.description}
        for reward in list_rewards()
    ]
    if not args.json:
        for record in records:
            record["needs_targets"] = "yes" if record["needs_targets"] else "no"
    return _emit(args, records, ("name", "needs_targets", "description"))


def run_tasks(args: argparse.Namespace) -> int:
    """List the registered tasks."""
    from text_envs.tasks import list_tasks

    records = [
        {
            "name": task.name,
            "train": len(task.train),
            "eval": len(task.eval),
            "reward": task.reward if isinstance(task.reward, str) else getattr(task.reward, "name", str(task.reward)),
            "max_new_tokens": task.max_new_tokens,
            "description": task.description,
        }
        for task in list_tasks()
    ]
    return _emit(args, records, ("name", "train", "eval", "reward", "max_new_tokens", "description"))


def run_responders(args: argparse.Namespace) -> int:
    """List the registered responders: the multi-turn tasks of ``TextChat-v0`` (``--env TextChat-v0 --task NAME``)."""
    from text_envs.responders import list_responders

    records = [{"name": name, "description": description} for name, description in list_responders().items()]
    records.append({"name": "textarena:<GameId>", "description": "any single-player TextArena game that runs offline "
                                                                 "(pip install 'textgen-rl[games]')"})
    return _emit(args, records, ("name", "description"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models``, ``rewards``, ``tasks`` and ``responders`` subcommands to the ``textgen-rl`` parser."""
    commands = (
        ("models", run_models, "list model aliases and whether each loads offline"),
        ("rewards", run_rewards, "list the registered reward models"),
        ("tasks", run_tasks, "list the registered tasks (prompt sets with a reward)"),
        ("responders", run_responders, "list the multi-turn tasks of TextChat-v0 (the other side of a conversation)"),
    )
    for name, func, help_text in commands:
        parser = subparsers.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.set_defaults(func=func)
