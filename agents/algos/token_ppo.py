"""``TokenPPO``: PPO at the token level over whole sequences, with an exact KL-regularised objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents import distributed
from agents.algos.base import SequenceOnPolicyAlgorithm
from agents.policy import TransformerPolicy
from agents.rl_math import clipped_policy_loss, clipped_value_loss, masked_mean
from text_envs.errors import ConfigError


class TokenPPO(SequenceOnPolicyAlgorithm):
    """Proximal Policy Optimization for language models on TextGen envs.

    Differences from SB3's ``PPO`` (which also runs on TextGen, with :class:`~agents.TransformerPolicy`):

    * the buffer keeps whole sequences, and an update evaluates **all tokens of a sequence in one
      forward pass** (teacher forcing over prompt + completion), never one forward per token;
    * per-token reward ``r_t - kl_coef * log pi_old(a_t|s_t)``: with the env's
      ``kl_coef * log pi_ref(a_t|s_t)`` inside ``r_t`` this optimises exactly
      ``E[R(x)] - kl_coef * KL(pi || pi_ref)``. Run the env with ``kl_penalty="deferred"`` (what
      ``make_algorithm("token-ppo", ...)`` does): it pays the reference term once at the end, from one
      teacher-forced reference forward, and the buffer moves each token's share back onto it, so GAE sees
      the same per-token rewards as with ``"dense"`` (which steps the reference every token) at the cost of
      ``"sparse"`` (which would credit the whole term to the last token);
    * GAE (``gamma=1``, ``lambda=0.95``), advantage whitening over the rollout, clipped policy
      and value losses, entropy bonus, gradient clipping, minibatches of sequences, epochs;
    * optional adaptive KL control (``kl_target``, ``kl_horizon``) shared with the env.

    Logs ``objective/score``, ``objective/kl``, ``objective/kl_coef``, ``losses/*``,
    ``rollout/ep_len_mean`` and sample texts (TensorBoard) through SB3's logger.

    :param clip_range: PPO ratio clipping.
    :param clip_range_vf: value clipping around the old values (None: off).
    :param target_kl: stop the epoch loop early when the approximate KL between old and new policy
        exceeds ``1.5 * target_kl`` (SB3's meaning; unrelated to ``kl_target``).
    :param whiten_advantages: normalise advantages over the rollout's tokens.
    Other parameters: see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`.
    """

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str,
                 learning_rate: float | Schedule = 5e-5, n_steps: int = 64, batch_size: int = 16,
                 n_epochs: int = 4, gamma: float = 1.0, gae_lambda: float = 0.95, clip_range: float = 0.2,
                 clip_range_vf: float | None = 0.2, ent_coef: float = 0.0, vf_coef: float = 0.5,
                 max_grad_norm: float = 1.0, target_kl: float | None = None, whiten_advantages: bool = True,
                 kl_coef: float | None = None, kl_target: float | None = None, kl_horizon: int = 10_000,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None, verbose: int = 0,
                 seed: int | None = None, device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        if not 0 < clip_range < 1:
            raise ConfigError(f"clip_range must be in (0, 1), got {clip_range!r}")
        if clip_range_vf is not None and not clip_range_vf > 0:
            raise ConfigError(f"clip_range_vf must be > 0 or None, got {clip_range_vf!r}")
        self.clip_range_value = clip_range
        self.clip_range_vf_value = clip_range_vf
        self.target_kl = target_kl
        self.whiten_advantages = whiten_advantages
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, gamma, gae_lambda, ent_coef,
                         vf_coef, max_grad_norm, kl_coef, kl_target, kl_horizon, tensorboard_log, policy_kwargs,
                         verbose, seed, device, _init_setup_model)

    def train(self) -> None:
        """One PPO update on the rollout buffer's sequences."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        buffer.compute_gae(self.gamma, self.gae_lambda, whiten=self.whiten_advantages,
                           whiten_fn=distributed.masked_whiten)  # data-parallel: over every rank's tokens
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl",
                                                         "clip_fraction", "grad_norm")}
        continue_training = True
        for _ in range(self.n_epochs):
            for batch, scales in self.update_minibatches():
                logprobs, entropy, values = self.evaluate_batch(batch, entropy_grad=self.ent_coef != 0)
                mask = batch.completion_mask
                policy_loss, clip_fraction = clipped_policy_loss(logprobs, batch.old_logprobs, batch.advantages,
                                                                 mask, self.clip_range_value)
                value_loss = clipped_value_loss(values, batch.old_values, batch.returns, mask,
                                                self.clip_range_vf_value)
                entropy_mean = masked_mean(entropy, mask)
                with torch.no_grad():
                    log_ratio = logprobs - batch.old_logprobs
                    kl_terms = torch.expm1(log_ratio) - log_ratio
                    approx_kl = float(masked_mean(kl_terms, mask))
                    # data-parallel: every rank stops on the KL of the global minibatch
                    stop_kl = (approx_kl if scales is None or self.target_kl is None
                               else float(distributed.global_masked_mean(kl_terms, mask)))
                if self.target_kl is not None and stop_kl > 1.5 * self.target_kl:
                    continue_training = False
                    break
                loss = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy_mean
                if scales is not None:  # every term is a token mean: this rank's share of the global mean
                    loss = loss * scales.token
                stats["grad_norm"].append(self.optimizer_step(loss))
                for key, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                                   ("entropy", entropy_mean), ("approx_kl", approx_kl),
                                   ("clip_fraction", clip_fraction)):
                    stats[key].append(float(value.detach()) if torch.is_tensor(value) else float(value))
            if not continue_training:
                break
        self._n_updates += self.n_epochs
        for key, values in stats.items():
            if values:
                self.logger.record(f"losses/{key}", float(np.mean(values)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.finish_update(buffer.episodes)
