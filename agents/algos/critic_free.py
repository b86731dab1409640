"""``CriticFreeAlgorithm``: the shared ``train()`` of REINFORCE, RLOO and GRPO.

They differ only in the sequence-level advantage (:meth:`CriticFreeAlgorithm.sequence_advantages`);
rollouts, sequence evaluation, the KL bookkeeping and logging come from
:class:`~agents.algos.base.SequenceOnPolicyAlgorithm`. The value head of the policy is never
trained (its forward still runs, its output is ignored).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.algos.advantages import broadcast_to_tokens, sequence_returns
from agents.algos.base import SequenceOnPolicyAlgorithm
from agents.buffers import SequenceBatch
from agents.policy import TransformerPolicy
from agents.rl_math import clipped_policy_loss, masked_mean
from text_envs.errors import ConfigError

LOSS_REDUCTIONS = ("token", "sequence")


class CriticFreeAlgorithm(SequenceOnPolicyAlgorithm):
    """Policy gradient with a sequence-level advantage applied to every token and no critic.

    **Return.** ``R_i = sum_t (r_t - kl_coef * log pi_old(a_t|s_t))`` where the env's ``r_t`` already
    holds the score (last token) and ``kl_coef * log pi_ref(a_t|s_t)`` (every token), so ``R_i`` is
    the sampled KL-regularised return ``score - kl_coef * sum_t log(pi_old / pi_ref)``, exactly the
    objective TokenPPO optimises.

    **Loss.** With ``clip_range`` the PPO clipped surrogate ``-min(rho A, clip(rho) A)`` averaged
    over the minibatch's tokens; without it the plain policy gradient ``-A * log pi``, averaged over
    tokens (``loss_reduction="token"``) or summed over each sequence and averaged over sequences
    (``"sequence"``: the textbook REINFORCE estimator). Plus ``-ent_coef * entropy``.

    **Groups.** With ``group_size = k > 1`` the env must give ``k`` completions of each prompt: the
    algorithm sets ``reset_options["group_size"] = k`` on the TextGen vec env (``num_envs`` must be
    a multiple of ``k``; an env created with another ``group_size`` is rejected) and the rollout
    buffer releases only complete groups. A group still incomplete when a rollout ends is kept
    and completed in the next rollout (its tokens keep the log-probabilities of the policy that
    sampled them, which the clipped ratio accounts for).

    **Data parallel** (see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`): groups never span
    ranks (each rank's env makes its own), so the group advantages need no reduction; the loss is
    normalised by the global minibatch's token or sequence count (:meth:`policy_loss_normaliser`).
    """

    trains_value_head = False

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str, learning_rate: float | Schedule,
                 n_steps: int, batch_size: int, n_epochs: int, clip_range: float | None, ent_coef: float,
                 max_grad_norm: float, loss_reduction: str, group_size: int, kl_coef: float | None,
                 kl_target: float | None, kl_horizon: int, tensorboard_log: str | None,
                 policy_kwargs: dict[str, Any] | None, verbose: int, seed: int | None, device: torch.device | str,
                 _init_setup_model: bool) -> None:
        if clip_range is not None and not 0 < clip_range < 1:
            raise ConfigError(f"clip_range must be in (0, 1) or None, got {clip_range!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if not isinstance(group_size, int) or group_size < 1:
            raise ConfigError(f"group_size must be a positive int, got {group_size!r}")
        self.clip_range_value = clip_range
        self.loss_reduction = loss_reduction
        self.group_size = group_size
        self.rollout_group_size = group_size
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, 1.0, 1.0, ent_coef, 0.0,
                         max_grad_norm, kl_coef, kl_target, kl_horizon, tensorboard_log, policy_kwargs, verbose,
                         seed, device, _init_setup_model=False)
        if group_size > 1 and self.env is not None:
            if self.n_envs % group_size:
                raise ConfigError(f"{type(self).__name__} needs num_envs divisible by group_size={group_size}, "
                                  f"got num_envs={self.n_envs}")
            options = getattr(self.env, "reset_options", None)
            if options is None:
                raise ConfigError(f"{type(self).__name__} needs a TextGen vec env (agents.make_text_vec_env) for "
                                  "grouped resets")
            existing = options.get("group_size")
            if _init_setup_model and existing not in (None, group_size):
                raise ConfigError(f"the env's reset_options group_size={existing} does not match "
                                  f"group_size={group_size}")
            options["group_size"] = group_size  # takes effect at the reset that starts learn()
        if _init_setup_model:
            self._setup_model()

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        if self.group_size > 1:
            options = self.env.reset_options  # type: ignore[union-attr]
            if options.get("group_size") != self.group_size or self._last_obs is None:
                options["group_size"] = self.group_size
                self._last_obs = None  # force a (grouped) reset
        return super()._setup_learn(*args, **kwargs)

    # ----------------------------------------------------------------------------------- advantages
    @abstractmethod
    def sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        """The advantage of each sequence of the buffer from the returns ``(N,) -> (N,)`` (groups are
        contiguous rows of ``group_size``); each algorithm defines it."""

    def policy_loss_normaliser(self) -> str:
        """What :meth:`policy_loss` divides by: ``"token"`` (the minibatch's tokens) or ``"sequence"`` (its
        sequences); data-parallel runs use the global minibatch's count of it."""
        return "sequence" if self.clip_range_value is None and self.loss_reduction == "sequence" else "token"

    def policy_loss(self, logprobs: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy loss of a minibatch and its clip fraction."""
        mask = batch.completion_mask
        if self.clip_range_value is not None:
            return clipped_policy_loss(logprobs, batch.old_logprobs, batch.advantages, mask, self.clip_range_value)
        weighted = batch.advantages * logprobs * mask  # (B, T)
        loss = -(weighted.sum(-1).mean() if self.loss_reduction == "sequence" else masked_mean(weighted, mask))
        return loss, torch.zeros(())

    # ---------------------------------------------------------------------------------------- train
    def train(self) -> None:
        """One update on the rollout buffer's (complete groups of) sequences."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        rewards, mask = buffer.total_rewards()  # (N, T)
        returns = sequence_returns(rewards, mask)  # (N,)
        advantages = self.sequence_advantages(returns)  # (N,)
        buffer.set_advantages(broadcast_to_tokens(advantages, mask))
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "entropy", "approx_kl", "clip_fraction",
                                                         "grad_norm")}
        for _ in range(self.n_epochs):
            for batch, scales in self.update_minibatches():
                logprobs, entropy, _ = self.evaluate_batch(batch, entropy_grad=self.ent_coef != 0)
                policy_loss, clip_fraction = self.policy_loss(logprobs, batch)
                entropy_mean = masked_mean(entropy, batch.completion_mask)
                with torch.no_grad():
                    log_ratio = logprobs - batch.old_logprobs
                    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, batch.completion_mask)
                if scales is None:
                    loss = policy_loss - self.ent_coef * entropy_mean
                else:  # data-parallel: this rank's share of the global minibatch's means
                    policy_scale = scales.sequence if self.policy_loss_normaliser() == "sequence" else scales.token
                    loss = policy_scale * policy_loss - self.ent_coef * scales.token * entropy_mean
                stats["grad_norm"].append(self.optimizer_step(loss))
                for key, value in (("policy_loss", policy_loss), ("entropy", entropy_mean),
                                   ("approx_kl", approx_kl), ("clip_fraction", clip_fraction)):
                    stats[key].append(float(value.detach()))
        self._n_updates += self.n_epochs
        for key, values in stats.items():
            if values:
                self.logger.record(f"losses/{key}", float(np.mean(values)))
        self.logger.record("train/return_mean", float(returns.mean()))
        self.logger.record("train/advantage_std", float(advantages.std()) if len(advantages) > 1 else 0.0)
        self.logger.record("train/n_sequences", len(buffer.episodes))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.finish_update(buffer.episodes)
