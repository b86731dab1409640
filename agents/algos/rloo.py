"""``RLOO``: REINFORCE Leave-One-Out (Ahmadian et al. 2024), with TRL's optional clipped ratio."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.algos.advantages import leave_one_out_advantages
from agents.algos.critic_free import CriticFreeAlgorithm
from agents.policy import TransformerPolicy
from agents.rl_math import masked_whiten


class RLOO(CriticFreeAlgorithm):
    """RLOO for language models on TextGen envs (same API as :class:`~agents.TokenPPO`).

    ``group_size = k`` completions of each prompt (the env's grouped resets, set up by the
    algorithm); sequence ``i`` of a group gets ``A_i = R_i - mean_{j != i} R_j`` on every token,
    ``R`` being the KL-regularised sequence return (the env pays ``kl_coef * log pi_ref``, the
    algorithm adds ``-kl_coef * log pi_old``). The loss is PPO's clipped surrogate averaged over
    tokens (``clip_range``; ``None`` gives the plain policy gradient), over ``n_epochs`` passes in
    minibatches of ``batch_size`` sequences, as TRL's ``RLOOTrainer`` does.

    :param group_size: completions per prompt (``num_envs`` must be a multiple).
    :param clip_range: ratio clipping (None: off).
    :param normalize_advantages: whiten the advantages over the rollout.
    Other parameters: see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`.
    """

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str,
                 learning_rate: float | Schedule = 5e-5, n_steps: int = 64, batch_size: int = 16, n_epochs: int = 2,
                 group_size: int = 4, clip_range: float | None = 0.2, normalize_advantages: bool = False,
                 loss_reduction: str = "token", ent_coef: float = 0.0, max_grad_norm: float = 1.0,
                 kl_coef: float | None = None, kl_target: float | None = None, kl_horizon: int = 10_000,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None, verbose: int = 0,
                 seed: int | None = None, device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        self.normalize_advantages = normalize_advantages
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, clip_range, ent_coef,
                         max_grad_norm, loss_reduction, group_size, kl_coef, kl_target, kl_horizon, tensorboard_log,
                         policy_kwargs, verbose, seed, device, _init_setup_model)

    def sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        advantages = leave_one_out_advantages(returns, self.group_size)
        if self.normalize_advantages and len(advantages) > 1:
            advantages = masked_whiten(advantages[None], torch.ones_like(advantages)[None])[0]
        return advantages
