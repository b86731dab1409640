"""Reinforcement learning from human feedback: collect feedback, train a reward model.

* :mod:`agents.rlhf.data`: the feedback JSONL formats (preferences, ratings, rankings), a
  validating reader and a crash-safe appending writer;
* :mod:`agents.rlhf.generate`: the completions to label (seeded sampling, cached per session);
* :mod:`agents.rlhf.label_server`: the local labelling web page (``textgen-rl label``);
* :mod:`agents.rlhf.oracle`: a simulated labeller answering with a reward model
  (``textgen-rl label --oracle sentiment``): synthetic preferences with a known ground truth;
* :mod:`agents.rlhf.reward_training`: reward-model training (``textgen-rl train-rm``); the result
  is used as ``make_reward("learned", path=...)`` (:mod:`text_envs.rewards.learned`).

Heavy modules (torch, transformers) are imported only when used.
"""

from __future__ import annotations

from agents.rlhf.data import (
    FeedbackData,
    FeedbackWriter,
    PreferencePair,
    Ranking,
    Rating,
    read_feedback,
    to_pairs,
    write_feedback,
)

__all__ = [
    "FeedbackData",
    "FeedbackWriter",
    "PreferencePair",
    "Ranking",
    "Rating",
    "read_feedback",
    "to_pairs",
    "write_feedback",
]
