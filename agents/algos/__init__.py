"""Sequence-level on-policy algorithms: one module per algorithm."""

from agents.algos.base import SequenceOnPolicyAlgorithm
from agents.algos.token_ppo import TokenPPO

__all__ = ["SequenceOnPolicyAlgorithm", "TokenPPO"]
