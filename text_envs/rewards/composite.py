"""``composite``: a weighted sum of other reward models."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards.base import RewardSpec, Targets, ValidatedReward, get_reward_info, make_reward, register_reward

__all__ = ["CompositeReward"]

_DICT_KEYS = {"name", "weight", "kwargs"}


def _check_weight(weight: Any, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ConfigError(f"weight of {where} must be a finite number, got {weight!r}")
    return float(weight)


class CompositeReward:
    """Weighted sum of reward models: ``reward = sum_i weight_i * reward_i(prompts, completions)``.

    Range: the weighted sum of the components' ranges. Each component is built with
    :func:`~text_envs.rewards.make_reward` and validated on its own, so a bad component score
    raises :class:`~text_envs.errors.RewardModelError` naming that component.

    Args:
        components: a non-empty sequence whose items are one of

            * ``(spec, weight)`` or ``(spec, weight, kwargs)``: ``spec`` a registered name, a
              reward model or a callable;
            * ``{"name": spec, "weight": 1.0, "kwargs": {...}}`` (weight defaults to 1.0);
            * a bare ``spec`` (weight 1.0).
        targets: passed to every component registered with ``needs_targets=True`` whose
            ``kwargs`` do not already contain ``targets`` (other components, e.g. ``length``
            whose targets mean something else, do not get them).

    :meth:`breakdown` returns each component's (unweighted) scores, for logging.
    """

    name = "composite"

    def __init__(self, components: Sequence[Any], targets: Targets | None = None) -> None:
        if isinstance(components, (str, bytes, Mapping)) or not isinstance(components, Sequence) or not components:
            raise ConfigError("components must be a non-empty list of (spec, weight) pairs or {'name', 'weight', 'kwargs'} dicts")
        self.components: list[tuple[ValidatedReward, float]] = []
        for i, item in enumerate(components):
            spec, weight, kwargs = self._parse(item, i)
            self.components.append((self._build(spec, kwargs, targets, i), weight))
        self.names = self._unique_names([m.name for m, _ in self.components])

    @staticmethod
    def _parse(item: Any, i: int) -> tuple[RewardSpec, float, dict[str, Any]]:
        where = f"components[{i}]"
        if isinstance(item, Mapping):
            unknown = set(item) - _DICT_KEYS
            if unknown or "name" not in item:
                raise ConfigError(
                    f"{where} must have a 'name' and optionally 'weight' and 'kwargs'; got keys {sorted(item)}"
                )
            spec, weight, kwargs = item["name"], item.get("weight", 1.0), item.get("kwargs") or {}
        elif isinstance(item, tuple) and len(item) in (2, 3):
            spec, weight = item[0], item[1]
            kwargs = item[2] if len(item) == 3 else {}
        elif isinstance(item, str) or callable(item):
            spec, weight, kwargs = item, 1.0, {}
        else:
            raise ConfigError(
                f"{where} must be (spec, weight), (spec, weight, kwargs), a dict or a spec; got {type(item).__name__}"
            )
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"kwargs of {where} must be a dict, got {type(kwargs).__name__}")
        return spec, _check_weight(weight, where), dict(kwargs)

    @staticmethod
    def _build(spec: RewardSpec, kwargs: dict[str, Any], targets: Targets | None, i: int) -> ValidatedReward:
        if isinstance(spec, str) and get_reward_info(spec).needs_targets and kwargs.get("targets") is None:
            if targets is None:
                raise ConfigError(
                    f"component {spec!r} (components[{i}]) needs targets: pass targets= to the composite "
                    "or in the component's kwargs"
                )
            kwargs = {**kwargs, "targets": targets}
        return make_reward(spec, **kwargs)

    @staticmethod
    def _unique_names(names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for n in names:
            seen[n] = seen.get(n, 0) + 1
            out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
        return out

    def breakdown(self, prompts: list[str], completions: list[str]) -> dict[str, np.ndarray]:
        """Each component's unweighted scores, keyed by component name (``name#2``... for repeats)."""
        return {n: model(prompts, completions) for n, (model, _) in zip(self.names, self.components)}

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        total = np.zeros(len(completions), dtype=np.float64)
        for model, weight in self.components:
            total += weight * model(prompts, completions)
        return total

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{w:g}" for n, (_, w) in zip(self.names, self.components))
        return f"CompositeReward({parts})"


register_reward(
    "composite",
    CompositeReward,
    description="weighted sum of other reward models: components=[(spec, weight), ...]",
)
