"""``length`` (closeness to a target word count) and ``format`` (regular-expression match)."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards.base import TargetLookup, Targets, check_finite_number, register_reward, shorten

__all__ = ["LengthReward", "FormatReward"]


def _parse_length(value: str, where: str) -> float:
    try:
        n = float(value.strip())
    except ValueError:
        raise ConfigError(f"target length {where} must be a number written as a string, got {value!r}") from None
    if not math.isfinite(n) or n <= 0:
        raise ConfigError(f"target length {where} must be a finite number > 0, got {value!r}")
    return n


class LengthReward:
    """Relative distance between the completion's word count and a target word count.

    ``reward = -abs(n_words - target_words) / target_words`` with ``n_words =
    len(completion.split())`` (whitespace-separated words). Range ``(-inf, 0]``: 0 exactly at the
    target, -1 for an empty completion, and unbounded below for completions longer than the
    target (``-1`` at twice the target, ``-2`` at three times...).

    Args:
        target_words: the target length (a number > 0), default 20.
        targets: optional per-prompt target lengths, a mapping prompt -> ``["35"]`` (or one list
            ``["35"]`` for every prompt): the first target string, parsed as a number, overrides
            ``target_words``. Every target is checked at construction.
    """

    name = "length"

    def __init__(self, target_words: float = 20, targets: Targets | None = None) -> None:
        self.target_words = check_finite_number("target_words", target_words, positive=True)
        self.targets = TargetLookup(targets, self.name) if targets is not None else None
        self._lengths: dict[tuple[str, ...], float] = {}
        if self.targets is not None:
            for group in self.targets.groups():
                self._lengths[group] = _parse_length(group[0], f"in targets ({shorten(group[0])})")

    def _target_for(self, prompt: str) -> float:
        if self.targets is None:
            return self.target_words
        return self._lengths[self.targets.lookup(prompt)]

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        out = np.empty(len(completions), dtype=np.float64)
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            target = self._target_for(prompt)
            out[i] = 0.0 - abs(len(completion.split()) - target) / target  # 0.0 - x: no -0.0
        return out

    def __repr__(self) -> str:
        return f"LengthReward(target_words={self.target_words:g}, targets={self.targets!r})"


class FormatReward:
    """1.0 if the completion matches a regular expression, else 0.0.

    ``mode="search"`` (default) uses ``re.search`` (the pattern occurs anywhere);
    ``mode="fullmatch"`` uses ``re.fullmatch`` (the whole completion matches). Range ``{0, 1}``.

    Args:
        pattern: a regular expression (string or compiled pattern); an invalid one raises
            :class:`ConfigError` at construction.
        mode: ``"search"`` or ``"fullmatch"``.
        flags: ``re`` flags for a string pattern, e.g. ``re.IGNORECASE | re.DOTALL``.
        strip: strip surrounding whitespace from the completion before matching (default False).
    """

    name = "format"

    def __init__(self, pattern: Any, mode: str = "search", flags: int = 0, strip: bool = False) -> None:
        if mode not in ("search", "fullmatch"):
            raise ConfigError(f"mode must be 'search' or 'fullmatch', got {mode!r}")
        if isinstance(pattern, re.Pattern):
            if flags:
                raise ConfigError("flags= cannot be combined with an already compiled pattern")
            self.regex = pattern
        elif isinstance(pattern, str):
            try:
                self.regex = re.compile(pattern, flags)
            except (re.error, TypeError, ValueError) as exc:
                raise ConfigError(f"invalid regular expression pattern={pattern!r}: {exc}") from None
        else:
            raise ConfigError(f"pattern must be a regular expression string, got {type(pattern).__name__}")
        self.mode = mode
        self.strip = bool(strip)
        self._match = self.regex.search if mode == "search" else self.regex.fullmatch

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [c.strip() for c in completions] if self.strip else completions
        return np.array([1.0 if self._match(t) else 0.0 for t in texts], dtype=np.float64)

    def __repr__(self) -> str:
        return f"FormatReward(pattern={self.regex.pattern!r}, mode={self.mode!r})"


register_reward(
    "length",
    LengthReward,
    description="-|n_words - target_words| / target_words: 0 at the target length, negative otherwise (range (-inf, 0])",
)
register_reward(
    "format",
    FormatReward,
    description="1.0 if the completion matches the regular expression pattern= (mode search|fullmatch), else 0.0",
)
