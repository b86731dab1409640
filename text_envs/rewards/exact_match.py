"""``exact_match``: 1.0 if the completion's answer equals a reference answer after normalisation."""

from __future__ import annotations

import math
import re
import string
import unicodedata

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards.base import TargetLookup, Targets, register_reward

__all__ = ["ExactMatchReward", "normalize_answer", "parse_number", "first_number"]

_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_FULL_NUMBER_RE = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?$|^[-+]?\.\d+$")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_LEAD_CHARS = string.whitespace + "\"'`([{*_"
_TRAIL_CHARS = string.whitespace + ".,;:!?\"'`)]}*_"
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014", "\u2026"}


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: Unicode NFKC, lowercase, punctuation removed, the articles
    a/an/the removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> float | None:
    """The number that ``text`` is, or None: surrounding whitespace, punctuation, a leading
    ``$`` and a trailing ``%`` are ignored and thousands separators are allowed
    (``" 42." -> 42.0``, ``"$1,000" -> 1000.0``, ``"3.50" -> 3.5``, ``"42 apples" -> None``)."""
    s = unicodedata.normalize("NFKC", text).lstrip(_LEAD_CHARS).rstrip(_TRAIL_CHARS)
    s = s.replace("\u2212", "-")  # unicode minus
    if s.startswith(("$", "-$", "+$")):
        s = s.replace("$", "", 1)
    s = s.removesuffix("%").strip()
    if not _FULL_NUMBER_RE.match(s):
        return None
    try:
        value = float(s.replace(",", ""))
    except ValueError:  # pragma: no cover - the regex only lets floats through
        return None
    return value if math.isfinite(value) else None


def first_number(text: str) -> str | None:
    """The first number written in ``text`` (e.g. ``"the answer is 1,234.5 apples"`` ->
    ``"1,234.5"``), or None."""
    m = _NUMBER_RE.search(unicodedata.normalize("NFKC", text).replace("\u2212", "-"))
    return m.group(0) if m else None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


class ExactMatchReward:
    """1.0 if the completion's answer matches one of the prompt's reference answers, else 0.0.

    The answer is the completion's first non-empty line (``first_line_only=True``, default) or
    the whole completion; with ``extract="first_number"`` it is the first number written in it
    (0.0 when there is none). Answer and reference match when both are numbers
    (:func:`parse_number`) with the same value (``"42." == "42" == " 42" == "42.0"``), or when
    their :func:`normalize_answer` forms (lowercase, no punctuation, no articles, whitespace
    collapsed) are equal. Range ``{0, 1}``.

    Args:
        targets: mapping prompt -> list of accepted answers, or one list for every prompt.
        first_line_only: only look at the first non-empty line of the completion.
        extract: ``"full"`` (the whole line/completion) or ``"first_number"``.
    """

    name = "exact_match"
    needs_targets = True

    def __init__(self, targets: Targets, first_line_only: bool = True, extract: str = "full") -> None:
        if extract not in ("full", "first_number"):
            raise ConfigError(f"extract must be 'full' or 'first_number', got {extract!r}")
        self.targets = TargetLookup(targets, self.name)
        self.first_line_only = bool(first_line_only)
        self.extract = extract
        self._refs: dict[tuple[str, ...], tuple[set[str], list[float]]] = {}

    def _compiled(self, refs: tuple[str, ...]) -> tuple[set[str], list[float]]:
        cached = self._refs.get(refs)
        if cached is None:
            numbers = [v for v in (parse_number(r) for r in refs) if v is not None]
            cached = ({normalize_answer(r) for r in refs}, numbers)
            self._refs[refs] = cached
        return cached

    def answer(self, completion: str) -> str | None:
        """The part of ``completion`` that is compared (None when no number is found)."""
        text = _first_line(completion) if self.first_line_only else completion
        return first_number(text) if self.extract == "first_number" else text

    def _match(self, completion: str, refs: tuple[str, ...]) -> bool:
        answer = self.answer(completion)
        if answer is None:
            return False
        texts, numbers = self._compiled(refs)
        value = parse_number(answer)
        if value is not None and any(math.isclose(value, n, rel_tol=1e-9, abs_tol=1e-12) for n in numbers):
            return True
        return normalize_answer(answer) in texts

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        refs = self.targets.for_batch(prompts)
        return np.array([1.0 if self._match(c, r) else 0.0 for c, r in zip(completions, refs)], dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"ExactMatchReward(first_line_only={self.first_line_only}, extract={self.extract!r}, "
            f"targets={self.targets!r})"
        )


register_reward(
    "exact_match",
    ExactMatchReward,
    description="1.0 if the completion's (first line / first number) answer equals a reference answer after normalisation, else 0.0",
    needs_targets=True,
)
