"""``text_envs``: token-level text-generation environments for Gymnasium.

Importing this package registers ``TextGen-v0`` and the multi-turn ``TextChat-v0``::

    import gymnasium as gym
    import text_envs  # noqa: F401

    env = gym.make("TextGen-v0", task="sentiment")              # one episode at a time
    envs = gym.make_vec("TextGen-v0", num_envs=8)                # natively batched
    chat = gym.make("TextChat-v0", task="guess-number")          # multi-turn, with a responder
"""

from __future__ import annotations

import gymnasium as gym

from text_envs.errors import (
    ConfigError,
    EnvClosedError,
    EpisodeFinishedError,
    FeedbackFormatError,
    InvalidActionError,
    InvalidObservationError,
    InvalidPromptError,
    MissingDependencyError,
    ResponderError,
    RewardModelError,
    TextEnvsError,
    UnknownModelError,
    UnknownResponderError,
    UnknownRewardModelError,
    UnknownTaskError,
)

__version__ = "0.1.0"

if "TextGen-v0" not in gym.registry:
    gym.register(
        id="TextGen-v0",
        entry_point="text_envs.env:TextGenEnv",
        vector_entry_point="text_envs.vector_env:TextGenVectorEnv",
    )
if "TextChat-v0" not in gym.registry:
    gym.register(
        id="TextChat-v0",
        entry_point="text_envs.chat_env:TextChatEnv",
        vector_entry_point="text_envs.chat_env:TextChatVectorEnv",
    )

__all__ = [
    "ConfigError", "EnvClosedError", "EpisodeFinishedError", "FeedbackFormatError", "InvalidActionError",
    "InvalidObservationError", "InvalidPromptError",
    "MissingDependencyError", "ResponderError", "RewardModelError", "TextEnvsError", "UnknownModelError",
    "UnknownResponderError", "UnknownRewardModelError",
    "UnknownTaskError", "__version__",
]
