"""``agents``: stable-baselines3 policies and algorithms for language models on TextGen envs.

* :class:`TransformerPolicy` / :class:`MaskableTransformerPolicy`: SB3 policies wrapping any
  ``AutoModelForCausalLM`` (works with stock ``PPO``, ``A2C`` and ``sb3_contrib.MaskablePPO``);
* :class:`TokenPPO`: token-level PPO evaluating whole sequences in one forward pass;
* :class:`Reinforce`, :class:`RLOO`, :class:`GRPO`: critic-free sequence-level algorithms;
* :func:`make_text_vec_env`: the batched TextGen env as an SB3 ``VecEnv``;
* :func:`compare`: several algorithms x seeds with the same token budget (``textgen-rl compare``).
"""

from agents.algos import GRPO, RLOO, Reinforce, SequenceOnPolicyAlgorithm, TokenPPO
from agents.compare import compare  # ``agents.compare`` is this function (module: sys.modules["agents.compare"])
from agents.policy import MaskableTransformerPolicy, TransformerPolicy
from agents.vec_env import TextGenVecEnv, make_text_vec_env

__all__ = ["GRPO", "RLOO", "MaskableTransformerPolicy", "Reinforce", "SequenceOnPolicyAlgorithm", "TextGenVecEnv",
           "TokenPPO", "TransformerPolicy", "compare", "make_text_vec_env"]
