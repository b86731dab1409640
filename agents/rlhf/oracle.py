"""A simulated labeller: answer labelling items with a registered reward model (``--oracle``).

``textgen-rl label ... --oracle sentiment`` does not serve the page: every pending item is answered
by a reward model built with :func:`text_envs.rewards.make_reward`, and the answers go through
the same :class:`~agents.rlhf.label_server.LabelSession` (hence the same
:class:`~agents.rlhf.data.FeedbackWriter`) as a human's clicks. The file therefore has exactly
the same lines as a human session, resuming skips the items already done, and a human can later
undo or extend an oracle session (or the other way round). This makes the RLHF walkthrough
runnable offline and gives synthetic-preference data sets whose ground truth is known.

Oracle spec (``REWARD[:kwargs]``, see :func:`parse_oracle_spec`)::

    sentiment                          make_reward("sentiment")
    length:{"target_words": 30}        JSON object of keyword arguments
    length:target_words=30             key=value pairs (as --reward-model)
    learned:rm/                        a trained reward model folder

How the scores become answers (``margin`` >= 0, default 0):

* ``compare``: the completion with the higher score is chosen; if the scores differ by
  ``margin`` or less (ties), the item is *skipped* (a skip line, ``"reason": "tie"`` in its meta);
* ``rate``: the score is mapped to the 1..5 scale by ``rating_scale``:

  - ``"quantile"`` (default): by the mid-rank quantile of the score among the scores of *all*
    the session's items, ``p = (#lower + #equal / 2) / n`` and ``rating = min(5, 1 + floor(5 p))``,
    so each rating gets about a fifth of the items and equal scores get equal ratings;
  - ``"minmax"``: linear between the lowest and highest score of the session's items,
    ``rating = 1 + round(4 (s - lo) / (hi - lo))`` (3 if all scores are equal);
  - ``(lo, hi)`` (CLI ``LO,HI``): the fixed linear map ``1 + round(4 (s - lo) / (hi - lo))``
    clipped to 1..5 (e.g. ``-1,1`` for VADER sentiment); it does not depend on the other items.

  Both session-wide maps use every item of the session (answered or not), so a resumed session
  rates exactly as an uninterrupted one;
* ``rank``: completions sorted by score, best first (equal scores keep their generation order);
  if *all* the scores lie within ``margin`` of each other the item is skipped (tie).

Each answer's meta records ``"labeller": "oracle:<spec>"`` and the oracle's scores (``"oracle_scores"``,
in the item's completion order).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from text_envs.errors import ConfigError

from .generate import MODES, LabelItem

__all__ = [
    "OracleAnswer",
    "OracleSummary",
    "RatingScale",
    "parse_oracle_spec",
    "parse_rating_scale",
    "make_oracle",
    "score_items",
    "compare_choice",
    "rank_order",
    "ratings_for",
    "oracle_answers",
    "run_oracle",
]

RatingScale = Union[str, tuple[float, float]]
RATING_LOW, RATING_HIGH = 1, 5


@dataclass(frozen=True)
class OracleAnswer:
    """The oracle's decision for one item: ``payload`` is a LabelSession answer, or None for a skip."""

    item_id: str
    payload: dict[str, Any] | None
    scores: tuple[float, ...]
    reason: str | None = None  # why it was skipped ("tie")

    @property
    def skipped(self) -> bool:
        return self.payload is None


@dataclass(frozen=True)
class OracleSummary:
    """What :func:`run_oracle` did."""

    answered: int
    skipped: int
    already_done: int
    total: int


# --------------------------------------------------------------------------- specs


def parse_oracle_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name[:kwargs]"`` -> ``(name, kwargs)``; kwargs is a JSON object or ``key=value,...``.

    ``learned:PATH`` keeps everything after the colon as the folder (as ``--reward-model``).
    """
    from text_envs.rewards.learned import parse_reward_spec

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"oracle spec must be a reward name like 'sentiment' or 'length:{{\"target_words\": 30}}', got {spec!r}")
    name, sep, rest = spec.strip().partition(":")
    if sep and rest.lstrip()[:1] in ("{", "["):
        try:
            kwargs = json.loads(rest)
        except ValueError as error:
            raise ConfigError(f"oracle spec {spec!r}: the keyword arguments are not valid JSON ({error})") from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"oracle spec {spec!r}: the keyword arguments must be a JSON object")
        if not name.strip():
            raise ConfigError(f"oracle spec {spec!r} has no reward name before ':'")
        return name.strip(), kwargs
    return parse_reward_spec(spec)


def parse_rating_scale(text: RatingScale) -> RatingScale:
    """``"quantile"``, ``"minmax"``, ``"LO,HI"`` or ``(lo, hi)`` (``lo < hi``, finite) -> a rating scale."""
    if isinstance(text, str) and text.strip() in ("quantile", "minmax"):
        return text.strip()
    parts: Sequence[Any]
    if isinstance(text, str):
        parts = text.split(",")
    elif isinstance(text, (tuple, list)):
        parts = text
    else:
        parts = ()
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"rating scale {text!r}: expected 'quantile', 'minmax' or 'LO,HI' (e.g. '-1,1')") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"rating scale {text!r}: expected finite LO < HI")
    return (lo, hi)


def make_oracle(spec: str, device: str = "auto") -> Any:
    """The reward model of an oracle spec (``make_reward(name, **kwargs)``).

    ``device`` is passed to rewards that take one (learned, sentiment classifiers...) unless the
    spec sets it.
    """
    import inspect

    from text_envs.rewards import get_reward_info, make_reward

    name, kwargs = parse_oracle_spec(spec)
    info = get_reward_info(name)
    try:
        accepts_device = "device" in inspect.signature(info.factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        accepts_device = False
    if accepts_device and "device" not in kwargs:
        kwargs["device"] = device
    return make_reward(name, **kwargs)


# --------------------------------------------------------------------------- pure decisions


def score_items(reward: Any, items: Sequence[LabelItem]) -> list[tuple[float, ...]]:
    """The reward of every completion of every item (one batched call, duplicates scored once)."""
    unique: dict[tuple[str, str], int] = {}
    for item in items:
        for completion in item.completions:
            unique.setdefault((item.prompt, completion), len(unique))
    if not unique:
        return []
    keys = list(unique)
    values = [float(v) for v in reward([p for p, _ in keys], [c for _, c in keys])]
    return [tuple(values[unique[(item.prompt, c)]] for c in item.completions) for item in items]


def compare_choice(scores: Sequence[float], margin: float = 0.0) -> int | None:
    """Index (0 or 1) of the better of two completions, or None when ``|a - b| <= margin`` (tie)."""
    a, b = scores
    if abs(a - b) <= margin:
        return None
    return 0 if a > b else 1


def rank_order(scores: Sequence[float], margin: float = 0.0) -> list[int] | None:
    """Completion indices best first (stable: equal scores keep their order); None if all tie."""
    if max(scores) - min(scores) <= margin:
        return None
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _linear(score: float, lo: float, hi: float) -> int:
    value = RATING_LOW + (RATING_HIGH - RATING_LOW) * (score - lo) / (hi - lo)
    return int(min(RATING_HIGH, max(RATING_LOW, math.floor(value + 0.5))))  # round half up, clipped


def ratings_for(scores: Sequence[float], scale: RatingScale = "quantile") -> list[int]:
    """Map scores to integer ratings 1..5 (see the module docstring for the three scales)."""
    scale = parse_rating_scale(scale)
    n = len(scores)
    if n == 0:
        return []
    if scale == "quantile":
        ordered = sorted(scores)
        out = []
        for s in scores:
            lower = bisect.bisect_left(ordered, s)
            equal = bisect.bisect_right(ordered, s) - lower
            p = (lower + equal / 2) / n
            out.append(min(RATING_HIGH, RATING_LOW + math.floor(5 * p)))
        return out
    if scale == "minmax":
        lo, hi = min(scores), max(scores)
        if hi <= lo:
            return [3] * n
        return [_linear(s, lo, hi) for s in scores]
    lo, hi = scale  # type: ignore[misc]
    return [_linear(s, lo, hi) for s in scores]


def oracle_answers(
    items: Sequence[LabelItem],
    scores: Sequence[Sequence[float]],
    mode: str,
    *,
    margin: float = 0.0,
    rating_scale: RatingScale = "quantile",
) -> list[OracleAnswer]:
    """The oracle's answer (or tie skip) for every item, from the items' completion scores."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if len(scores) != len(items):
        raise ValueError(f"{len(scores)} score tuples for {len(items)} items")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin={margin!r}: expected a finite number >= 0")
    answers = []
    if mode == "rate":
        ratings = ratings_for([s[0] for s in scores], rating_scale)
        for item, s, rating in zip(items, scores, ratings):
            answers.append(OracleAnswer(item.id, {"id": item.id, "score": rating}, tuple(s)))
        return answers
    for item, s in zip(items, scores):
        if mode == "compare":
            choice = compare_choice(s, margin)
            payload = None if choice is None else {"id": item.id, "choice": choice}
        else:
            order = rank_order(s, margin)
            payload = None if order is None else {"id": item.id, "order": order}
        answers.append(OracleAnswer(item.id, payload, tuple(s), None if payload else "tie"))
    return answers


# --------------------------------------------------------------------------- session


def run_oracle(
    session: Any,
    reward: Any,
    *,
    spec: str,
    margin: float = 0.0,
    rating_scale: RatingScale = "quantile",
) -> OracleSummary:
    """Answer every pending item of a :class:`~agents.rlhf.label_server.LabelSession` with ``reward``.

    All items are scored (the session-wide rating scales need them), only the pending ones are
    answered, through ``session.answer`` / ``session.skip`` (same lines, same validation).
    """
    items = list(session.items)
    decisions = oracle_answers(items, score_items(reward, items), session.mode, margin=margin, rating_scale=rating_scale)
    done = session.writer.done_ids()
    answered = skipped = already = 0
    for decision in decisions:
        if decision.item_id in done:
            already += 1
            continue
        meta = {"labeller": f"oracle:{spec}", "oracle_scores": [round(s, 6) for s in decision.scores]}
        if decision.skipped:
            session.skip({"id": decision.item_id}, meta={**meta, "reason": decision.reason})
            skipped += 1
        else:
            session.answer(decision.payload, meta=meta)
            answered += 1
    return OracleSummary(answered=answered, skipped=skipped, already_done=already, total=len(items))
