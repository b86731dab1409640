"""Sequence-level on-policy algorithms: one module per algorithm."""

from agents.algos.base import SequenceOnPolicyAlgorithm
from agents.algos.critic_free import CriticFreeAlgorithm
from agents.algos.grpo import GRPO
from agents.algos.reinforce import Reinforce
from agents.algos.rloo import RLOO
from agents.algos.token_ppo import TokenPPO

__all__ = ["GRPO", "RLOO", "CriticFreeAlgorithm", "Reinforce", "SequenceOnPolicyAlgorithm", "TokenPPO"]
