"""``sentiment``: VADER sentiment of the completion."""

from __future__ import annotations

import numpy as np

from text_envs.errors import MissingDependencyError
from text_envs.rewards.base import join_prompt, register_reward

__all__ = ["SentimentReward"]


class SentimentReward:
    """VADER compound sentiment score of each completion.

    Returns ``SentimentIntensityAnalyzer().polarity_scores(text)["compound"]``: a normalised sum
    of the lexicon valences of the words (with VADER's rules for negation, intensifiers, "but",
    capitals and punctuation), ``compound = s / sqrt(s**2 + 15)``; range ``[-1, 1]``, ``> 0``
    positive, ``< 0`` negative, ``0`` neutral or empty text.

    Args:
        include_prompt: score ``prompt + completion`` (joined with a space if needed) instead of the completion alone (for
            completions that continue a sentence started by the prompt).
    """

    name = "sentiment"

    def __init__(self, include_prompt: bool = False) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise MissingDependencyError(
                "the 'sentiment' reward needs vaderSentiment: pip install vaderSentiment"
            ) from exc
        self.include_prompt = bool(include_prompt)
        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [join_prompt(p, c) for p, c in zip(prompts, completions)] if self.include_prompt else completions
        return np.array([self._analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)

    def __repr__(self) -> str:
        return f"SentimentReward(include_prompt={self.include_prompt})"


register_reward(
    "sentiment",
    SentimentReward,
    description="VADER compound sentiment of the completion, in [-1, 1] (higher = more positive)",
)
