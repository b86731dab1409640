"""What every ``textgen-rl`` subcommand shares: a parser whose errors are one line, a help formatter that
shows defaults, and argument types that check a value where the user typed it.

A type below raises :class:`argparse.ArgumentTypeError`; argparse then names the flag as typed
(``argument --learning-rate: expected a number > 0, got '-1'``) and :class:`OneLineParser` prints that
as one line on stderr and exits with code 2, before the command does anything.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "DefaultsHelpFormatter",
    "OneLineParser",
    "bounded_float",
    "bounded_int",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

#: Largest integer any count or budget flag accepts (so that no flag reaches numpy/torch as an overflow).
MAX_INT = 2**62


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reports a usage error as one line (``PROG: error: MESSAGE``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _number(text: str, cast: Callable[[str], float | int], kind: str) -> float | int:
    try:
        value = cast(text)
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    return value


def bounded_int(low: int, high: int = MAX_INT) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""
    kind = f"an integer >= {low}" if high == MAX_INT else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        value = int(_number(text, int, kind))
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return value

    parse.__name__ = kind
    return parse


def bounded_float(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
                  ) -> Callable[[str], float]:
    """A finite number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``)."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    kind = (f"a finite number {'>' if low_open else '>='} {low:g}" if high == math.inf
            else f"a number in {left}{low:g}, {high:g}{right}")

    def parse(text: str) -> float:
        value = float(_number(text, float, kind))
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return value

    parse.__name__ = kind
    return parse


positive_int = bounded_int(1)
non_negative_int = bounded_int(0)
positive_float = bounded_float(0.0, low_open=True)
non_negative_float = bounded_float(0.0)
