"""``sentiment``: VADER sentiment of the completion."""

from __future__ import annotations

import numpy as np

from text_envs.errors import MissingDependencyError
from text_envs.rewards.base import join_prompt, register_reward
from text_envs.validation import check_int

__all__ = ["SentimentReward"]


class SentimentReward:
    """VADER compound sentiment score of each completion.

    Returns ``SentimentIntensityAnalyzer().polarity_scores(text)["compound"]``: a normalised sum
    of the lexicon valences of the words (with VADER's rules for negation, intensifiers, "but",
    capitals and punctuation), ``compound = s / sqrt(s**2 + 15)``; range ``[-1, 1]``, ``> 0``
    positive, ``< 0`` negative, ``0`` neutral or empty text.

    **Short completions score -1.** A completion of fewer than ``min_words`` words (an empty one, or
    one stopped after a word or two) gets the lowest score, -1, not VADER's 0 for "neutral": otherwise
    an empty completion (score 0) beats any sentence with a negative word, and a policy learns to stop
    at once instead of writing something positive (observed on the main job). ``min_words=0``
    restores the plain VADER score.

    Args:
        include_prompt: score ``prompt + completion`` (joined with a space if needed) instead of the completion alone (for
            completions that continue a sentence started by the prompt).
        min_words: completions with fewer words score -1.
    """

    name = "sentiment"

    def __init__(self, include_prompt: bool = False, min_words: int = 3) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise MissingDependencyError(
                "the 'sentiment' reward needs vaderSentiment: pip install vaderSentiment"
            ) from exc
        self.include_prompt = bool(include_prompt)
        self.min_words = check_int("min_words", min_words, 0, 1000)
        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [join_prompt(p, c) for p, c in zip(prompts, completions)] if self.include_prompt else completions
        scores = [self._analyzer.polarity_scores(t)["compound"] if len(c.split()) >= self.min_words else -1.0
                  for t, c in zip(texts, completions)]
        return np.array(scores, dtype=np.float64)

    def __repr__(self) -> str:
        return f"SentimentReward(include_prompt={self.include_prompt}, min_words={self.min_words})"


register_reward(
    "sentiment",
    SentimentReward,
    description="VADER compound sentiment of the completion, in [-1, 1] (higher = more positive); completions of "
                "fewer than min_words=3 words score -1",
)
