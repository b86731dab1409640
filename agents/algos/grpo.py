"""``GRPO``: Group Relative Policy Optimization (Shao et al. 2024) with the env's KL decomposition."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.algos.advantages import group_normalized_advantages
from agents.algos.critic_free import CriticFreeAlgorithm
from agents.policy import TransformerPolicy


class GRPO(CriticFreeAlgorithm):
    """GRPO for language models on TextGen envs (same API as :class:`~agents.TokenPPO`).

    ``group_size = k`` completions of each prompt (the env's grouped resets, set up by the
    algorithm); every token of sequence ``i`` gets ``A_i = (R_i - mean_group R) / (std_group R + eps)``
    (``scale_rewards=False``: ``R_i - mean_group R``, as Dr. GRPO), with PPO's clipped ratio
    averaged over the minibatch's tokens.

    **KL.** The paper adds a ``beta * KL(pi || pi_ref)`` (k3) loss term. Here, as everywhere in this
    library, the KL is part of the reward: the env pays ``kl_coef * log pi_ref(a_t|s_t)`` per token
    and the algorithm adds ``-kl_coef * log pi_old(a_t|s_t)`` (same as TokenPPO), so ``R_i`` is the
    KL-regularised sequence return ``score - kl_coef * sum_t log(pi_old / pi_ref)`` and GRPO
    maximises ``E[score] - kl_coef * KL(pi || pi_ref)`` exactly; there is no separate KL loss.

    :param group_size: completions per prompt (``num_envs`` must be a multiple).
    :param clip_range: ratio clipping (None: off).
    :param scale_rewards: divide by the group's standard deviation.
    :param eps: added to the standard deviation.
    Other parameters: see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`.
    """

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str,
                 learning_rate: float | Schedule = 5e-5, n_steps: int = 64, batch_size: int = 16, n_epochs: int = 2,
                 group_size: int = 4, clip_range: float | None = 0.2, scale_rewards: bool = True, eps: float = 1e-4,
                 loss_reduction: str = "token", ent_coef: float = 0.0, max_grad_norm: float = 1.0,
                 kl_coef: float | None = None, kl_target: float | None = None, kl_horizon: int = 10_000,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None, verbose: int = 0,
                 seed: int | None = None, device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        self.scale_rewards = scale_rewards
        self.eps = eps
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, clip_range, ent_coef,
                         max_grad_norm, loss_reduction, group_size, kl_coef, kl_target, kl_horizon, tensorboard_log,
                         policy_kwargs, verbose, seed, device, _init_setup_model)

    def sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        advantages = group_normalized_advantages(returns, self.group_size, self.scale_rewards, self.eps)
        grouped = returns.view(-1, self.group_size)
        self.logger.record("train/zero_std_groups", float((grouped.std(-1) < 1e-8).float().mean()))
        return advantages
