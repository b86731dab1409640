"""``toxicity``: a penalty for offensive completions (alt-profanity-check)."""

from __future__ import annotations

import numpy as np

from text_envs.errors import MissingDependencyError
from text_envs.rewards.base import check_finite_number, join_prompt, register_reward

__all__ = ["ToxicityReward"]


class ToxicityReward:
    """Negative probability that the completion is offensive.

    ``reward = -scale * p_offensive`` where ``p_offensive`` is
    ``profanity_check.predict_prob(texts)`` (a linear SVM over character/word n-grams trained on
    hate-speech and offensive-language data, from the ``alt-profanity-check`` package), computed
    for the whole batch in one call. Range ``[-scale, 0]`` (``[-1, 0]`` by default): 0 for a
    clean text, close to ``-scale`` for an offensive one. It is a penalty: add it to another
    reward with :mod:`~text_envs.rewards.composite`.

    Args:
        scale: a finite number > 0 multiplying the probability.
        include_prompt: score ``prompt + completion`` (joined with a space if needed) instead of the completion alone.
    """

    name = "toxicity"

    def __init__(self, scale: float = 1.0, include_prompt: bool = False) -> None:
        self.scale = check_finite_number("scale", scale, positive=True)
        self.include_prompt = bool(include_prompt)
        try:
            from profanity_check import predict_prob
        except ImportError as exc:
            raise MissingDependencyError(
                "the 'toxicity' reward needs alt-profanity-check: pip install alt-profanity-check"
            ) from exc
        self._predict_prob = predict_prob

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [join_prompt(p, c) for p, c in zip(prompts, completions)] if self.include_prompt else list(completions)
        probs = np.asarray(self._predict_prob(texts), dtype=np.float64).reshape(-1)
        return 0.0 - self.scale * probs  # 0.0 - x: a clean text scores 0.0, not -0.0

    def __repr__(self) -> str:
        return f"ToxicityReward(scale={self.scale}, include_prompt={self.include_prompt})"


register_reward(
    "toxicity",
    ToxicityReward,
    description="penalty -scale * P(offensive) from alt-profanity-check, in [-scale, 0]",
)
