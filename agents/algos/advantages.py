"""Sequence-level advantages of the critic-free algorithms, as small pure functions on tensors.

Shapes: ``N`` sequences, ``T`` completion tokens (right-padded), ``G`` groups of ``k`` sequences
sharing a prompt (``N = G * k``, group ``g`` is rows ``g*k .. g*k+k-1``).
"""

from __future__ import annotations

import torch

from text_envs.errors import ConfigError

#: A group whose returns have a standard deviation below this has "zero variance" (all its advantages are 0).
ZERO_STD = 1e-8


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted return of each sequence, ``sum_t r_t`` over real tokens: ``(N, T), (N, T) -> (N,)``.

    With the buffer's total rewards (``r_t - kl_coef * log pi_old``, the env's ``r_t`` holding the
    score and ``kl_coef * log pi_ref``), this is the KL-regularised return
    ``R(x) - kl_coef * sum_t (log pi_old - log pi_ref)``.
    """
    return (rewards * mask.to(rewards.dtype)).sum(-1)


def _grouped(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ConfigError(f"group advantages need group_size >= 2, got {group_size}")
    if returns.ndim != 1 or returns.numel() % group_size:
        raise ConfigError(f"{returns.numel()} returns are not whole groups of {group_size}")
    return returns.view(-1, group_size)  # (G, k)


def leave_one_out_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: ``A_i = R_i - mean_{j != i} R_j`` within each group. ``(N,) -> (N,)``.

    Equal to ``k / (k - 1) * (R_i - mean_group)``.
    """
    grouped = _grouped(returns, group_size)  # (G, k)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)  # (G, k)
    return (grouped - others).reshape(-1)


def group_normalized_advantages(returns: torch.Tensor, group_size: int, scale_rewards: bool = True,
                                eps: float = 1e-4) -> torch.Tensor:
    """GRPO: ``A_i = (R_i - mean_group) / (std_group + eps)``; without ``scale_rewards`` only the mean
    is removed (Dr. GRPO). ``std`` is the unbiased (``k - 1``) group standard deviation, as in TRL. ``(N,) -> (N,)``."""
    grouped = _grouped(returns, group_size)  # (G, k)
    centred = grouped - grouped.mean(-1, keepdim=True)  # (G, k)
    if scale_rewards:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(returns: torch.Tensor, group_size: int, tol: float = ZERO_STD) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: which groups have returns of non-zero variance (standard deviation
    above ``tol``), i.e. give a non-zero advantage to some sequence. ``(N,) -> (G,)`` bool."""
    grouped = _grouped(returns, group_size)  # (G, k)
    return grouped.std(-1) > tol


def moving_average_baseline(baseline: float | None, returns: torch.Tensor, decay: float) -> float:
    """REINFORCE's exponential moving-average baseline after a batch: ``decay * b + (1 - decay) * mean(R)``
    (``mean(R)`` when there is no baseline yet). ``(N,) -> float``."""
    mean = float(returns.mean())
    return mean if baseline is None else decay * baseline + (1.0 - decay) * mean


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A sequence-level advantage applied to every real token: ``(N,), (N, T) -> (N, T)``."""
    return advantages.unsqueeze(-1) * mask.to(advantages.dtype)
