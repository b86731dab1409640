"""Reward models for text generation: ``reward(prompts, completions) -> np.ndarray``.

Build one by name with :func:`make_reward` (``list_rewards()`` lists the names)::

    from text_envs.rewards import make_reward
    r = make_reward("sentiment")
    r(["The film was"], [" wonderful, I loved it"])        # array([0.8...])
    r = make_reward("composite", components=[("sentiment", 1.0), ("toxicity", 2.0)])

or wrap any callable ``fn(prompts, completions) -> sequence of floats`` with ``make_reward(fn)``.
Every reward model built by :func:`make_reward` validates its output (finite float64, one score
per pair) and raises :class:`~text_envs.errors.RewardModelError` otherwise.

Registered reward models (one module each; heavy dependencies are imported when a model is
built, so importing this package is cheap): ``sentiment``, ``toxicity``, ``concepts``,
``length``, ``format``, ``reference``, ``similarity``, ``exact_match``, ``hf_classifier``,
``composite``.
"""

from __future__ import annotations

from text_envs.rewards import learned  # noqa: E402,F401  (registers "learned")
from text_envs.rewards.base import (
    RewardInfo,
    RewardModel,
    RewardSpec,
    TargetLookup,
    Targets,
    ValidatedReward,
    get_reward_info,
    list_rewards,
    make_reward,
    register_reward,
    resolve_device,
    validate_scores,
)
from text_envs.rewards.composite import CompositeReward  # noqa: E402
from text_envs.rewards.concepts import ConceptsReward  # noqa: E402
from text_envs.rewards.exact_match import ExactMatchReward  # noqa: E402
from text_envs.rewards.hf_classifier import HFClassifierReward  # noqa: E402
from text_envs.rewards.length import FormatReward, LengthReward  # noqa: E402
from text_envs.rewards.reference import ReferenceReward  # noqa: E402

# importing each module registers its reward model(s)
from text_envs.rewards.sentiment import SentimentReward  # noqa: E402
from text_envs.rewards.similarity import SimilarityReward  # noqa: E402
from text_envs.rewards.toxicity import ToxicityReward  # noqa: E402

__all__ = [
    "RewardModel",
    "RewardInfo",
    "RewardSpec",
    "Targets",
    "TargetLookup",
    "ValidatedReward",
    "register_reward",
    "list_rewards",
    "get_reward_info",
    "make_reward",
    "validate_scores",
    "resolve_device",
    "SentimentReward",
    "ToxicityReward",
    "ConceptsReward",
    "LengthReward",
    "FormatReward",
    "ReferenceReward",
    "SimilarityReward",
    "ExactMatchReward",
    "HFClassifierReward",
    "CompositeReward",
]
