"""``agents``: stable-baselines3 policies and algorithms for language models on TextGen envs.

* :class:`TransformerPolicy` / :class:`MaskableTransformerPolicy`: SB3 policies wrapping any
  ``AutoModelForCausalLM`` (works with stock ``PPO``, ``A2C`` and ``sb3_contrib.MaskablePPO``);
* :class:`TokenPPO`: token-level PPO evaluating whole sequences in one forward pass;
* :class:`Reinforce`, :class:`RLOO`, :class:`GRPO`: critic-free sequence-level algorithms;
* :func:`make_text_vec_env`: the batched TextGen env as an SB3 ``VecEnv``;
* :func:`compare_algorithms`: several algorithms x seeds with the same token budget (``textgen-rl compare``;
  also ``agents.compare.compare``).

Names are imported lazily (PEP 562), so that ``textgen-rl --help`` and the light subcommands do not pay
for importing torch, transformers and stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, str]] = {
    "TokenPPO": ("agents.algos", "TokenPPO"),
    "Reinforce": ("agents.algos", "Reinforce"),
    "RLOO": ("agents.algos", "RLOO"),
    "GRPO": ("agents.algos", "GRPO"),
    "SequenceOnPolicyAlgorithm": ("agents.algos", "SequenceOnPolicyAlgorithm"),
    "TransformerPolicy": ("agents.policy", "TransformerPolicy"),
    "MaskableTransformerPolicy": ("agents.policy", "MaskableTransformerPolicy"),
    "TextGenVecEnv": ("agents.vec_env", "TextGenVecEnv"),
    "make_text_vec_env": ("agents.vec_env", "make_text_vec_env"),
    "compare_algorithms": ("agents.compare", "compare"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
