"""``Reinforce``: REINFORCE with an exponential moving-average baseline (no critic, no clipping)."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import distributed
from agents.algos.advantages import moving_average_baseline
from agents.algos.critic_free import CriticFreeAlgorithm
from agents.policy import TransformerPolicy
from text_envs.errors import ConfigError


class Reinforce(CriticFreeAlgorithm):
    """REINFORCE for language models on TextGen envs (same API as :class:`~agents.TokenPPO`).

    ``A_i = R_i - b`` for every token of sequence ``i``, where ``R_i`` is the KL-regularised
    sequence return (see :class:`~agents.algos.critic_free.CriticFreeAlgorithm`) and ``b`` the
    moving average of past rollouts' mean returns (``b <- baseline_decay * b + (1 - baseline_decay) *
    mean(R)``, updated *after* the advantages are computed so it does not depend on the current
    batch; the first rollout uses its own mean). Loss ``-mean_i A_i * sum_t log pi(a_t|s_t)``
    (``loss_reduction="sequence"``, the unbiased score-function estimator) or the token mean
    (``"token"``). One gradient step per minibatch, ``n_epochs=1`` by default (on-policy).

    :param baseline_decay: decay of the moving-average baseline, in [0, 1).
    :param normalize_advantages: divide the advantages by their standard deviation over the rollout.
    Other parameters: see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`.
    """

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str,
                 learning_rate: float | Schedule = 5e-5, n_steps: int = 64, batch_size: int = 16, n_epochs: int = 1,
                 baseline_decay: float = 0.9, normalize_advantages: bool = False, loss_reduction: str = "sequence",
                 ent_coef: float = 0.0, max_grad_norm: float = 1.0, kl_coef: float | None = None,
                 kl_target: float | None = None, kl_horizon: int = 10_000, tensorboard_log: str | None = None,
                 policy_kwargs: dict[str, Any] | None = None, verbose: int = 0, seed: int | None = None,
                 device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        if not 0 <= baseline_decay < 1:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        self.baseline_decay = baseline_decay
        self.normalize_advantages = normalize_advantages
        self.baseline: float | None = None
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, None, ent_coef, max_grad_norm,
                         loss_reduction, 1, kl_coef, kl_target, kl_horizon, tensorboard_log, policy_kwargs, verbose,
                         seed, device, _init_setup_model)

    def sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        """``R_i - b`` (optionally divided by its standard deviation); data-parallel, the batch mean and
        standard deviation are over every rank's sequences. ``(N,) -> (N,)``."""
        if distributed.is_distributed():
            return self._global_sequence_advantages(returns)
        baseline = float(returns.mean()) if self.baseline is None else self.baseline
        advantages = returns - baseline
        if self.normalize_advantages and len(advantages) > 1:
            advantages = advantages / (advantages.std() + 1e-8)
        self.baseline = moving_average_baseline(self.baseline, returns, self.baseline_decay)
        self.logger.record("train/baseline", self.baseline)
        return advantages

    def _global_sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(returns).unsqueeze(0)
        mean = float(distributed.global_masked_mean(returns.unsqueeze(0), ones))
        baseline = mean if self.baseline is None else self.baseline
        advantages = returns - baseline
        count = int(distributed.all_reduce_sum(torch.tensor([len(returns)], dtype=torch.int64))[0])
        if self.normalize_advantages and count > 1:
            centred = advantages - float(distributed.global_masked_mean(advantages.unsqueeze(0), ones))
            variance = float(distributed.all_reduce_sum((centred.double() ** 2).sum())) / (count - 1)
            advantages = advantages / (variance ** 0.5 + 1e-8)
        self.baseline = moving_average_baseline(self.baseline, returns.new_tensor([mean]), self.baseline_decay)
        self.logger.record("train/baseline", self.baseline)
        return advantages
