"""Built-in responders: ``guess-number`` (a game) and ``calculator`` (a tool), both offline and seeded.

Each is a small class following :class:`~text_envs.responders.base.Responder`; they are also the examples
of how to write one. Episodes of the ``eval`` split draw from a separate stream (``random.Random`` seeded
with ``"eval:<seed>"``), so held-out games differ from training ones with the same seed.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from typing import Any

from text_envs.responders.base import register_responder

_INTEGER = re.compile(r"-?\d+")


def _rng(seed: int | None, options: dict[str, Any] | None) -> random.Random:
    split = (options or {}).get("split", "train")
    return random.Random(f"{split}:{seed}")


class GuessNumber:
    """Guess a hidden whole number from 1 to ``high``; the reply says ``higher`` or ``lower``.

    Reward: ``+1`` when a turn's first integer is the number (the episode ends), else ``-turn_cost``.
    """

    name = "guess-number"

    def __init__(self, high: int = 16, turn_cost: float = 0.05) -> None:
        self.high, self.turn_cost = high, turn_cost
        self.secret = 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> str:
        self.secret = _rng(seed, options).randint(1, self.high)
        return f"I am thinking of a whole number from 1 to {self.high}. Guess it: answer with one number."

    def respond(self, agent_text: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        match = _INTEGER.search(agent_text)
        if match is None:
            return f"Answer with a number from 1 to {self.high}.", -self.turn_cost, False, {"guess": None}
        guess = int(match.group())
        if guess == self.secret:
            return None, 1.0, True, {"guess": guess, "solved": True}
        hint = "Higher." if guess < self.secret else "Lower."
        return hint, -self.turn_cost, False, {"guess": guess, "solved": False}


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
              ast.Mod: operator.mod}
_CALL = re.compile(r"calc\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
#: Largest magnitude an intermediate result of a ``calc(...)`` expression may reach.
CALC_LIMIT = 10**12


def evaluate_arithmetic(expression: str) -> int:
    """The value of an integer expression with ``+ - * // %`` and parentheses (no names, no calls, no powers).

    :raises ValueError: for anything else, division by zero or a result beyond ``CALC_LIMIT``.
    """
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            result = node.value
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            result = -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
                raise ValueError("division by zero")
            result = _OPERATORS[type(node.op)](left, right)
        else:
            raise ValueError(f"unsupported expression {ast.dump(node)[:40]}")
        if abs(result) > CALC_LIMIT:
            raise ValueError("number too large")
        return result

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"cannot parse {expression!r}") from error
    return value(tree.body)


class Calculator:
    """Arithmetic word problems with a calculator tool.

    A turn containing ``calc(<expression>)`` (integers, ``+ - * // %``, parentheses) is a tool call: the reply
    is ``= <value>`` (or an error) and the turn pays 0. Any other turn is the final answer: its last integer is
    checked exactly against the problem's answer (reward 1 or 0) and the episode ends.
    """

    name = "calculator"
    _TEMPLATES = (  # one operation (4 of 7) or two
        ("A box holds {a} apples. How many apples are in {c} boxes?", "{a}*{c}"),
        ("{a} birds sit in a tree and {b} more arrive. How many birds are in the tree?", "{a}+{b}"),
        ("A book has {a} pages and Tom has read {b} of them. How many pages are left?", "{a}-{b}"),
        ("{a} sweets are shared equally by {c} children. How many whole sweets does each child get?", "{a}//{c}"),
        ("A crate holds {a} boxes of {b} apples. How many apples are in {c} crates?", "{a}*{b}*{c}"),
        ("A train has {a} cars with {b} seats each; {c} seats are empty. How many people are seated?",
         "{a}*{b}-{c}"),
        ("Ann has {a} coins and gets {b} more every day for {c} days. How many coins does she have?",
         "{a}+{b}*{c}"),
    )

    def __init__(self) -> None:
        self.problem, self.answer = "", 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> str:
        rng = _rng(seed, options)
        template, formula = self._TEMPLATES[rng.randrange(len(self._TEMPLATES))]
        numbers = {"a": rng.randint(12, 99), "b": rng.randint(3, 29), "c": rng.randint(2, 19)}
        self.problem = template.format(**numbers)
        self.answer = evaluate_arithmetic(formula.format(**numbers))
        return (f"{self.problem} You may use a calculator by writing calc(expression), e.g. calc(17*23). "
                "End with the answer as a number.")

    def respond(self, agent_text: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        call = _CALL.search(agent_text)
        if call is not None:
            try:
                return f"= {evaluate_arithmetic(call.group(1))}", 0.0, False, {"tool": call.group(1)}
            except ValueError as error:
                return f"calc error: {error}", 0.0, False, {"tool": call.group(1)}
        numbers = _INTEGER.findall(agent_text)
        correct = bool(numbers) and int(numbers[-1]) == self.answer
        return None, 1.0 if correct else 0.0, True, {"answer": self.answer, "correct": correct}


def register_builtin_responders() -> None:
    """Register ``guess-number`` and ``calculator`` (idempotent)."""
    register_responder("guess-number", GuessNumber, "guess a number from 1 to 16 from higher/lower hints",
                       overwrite=True)
    register_responder("calculator", Calculator, "arithmetic word problems with a calc(...) tool, answer checked "
                       "exactly", overwrite=True)
