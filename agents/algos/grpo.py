"""``GRPO``: Group Relative Policy Optimization (Shao et al. 2024) with the env's KL decomposition, and its
variants Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025) as ``loss_type`` options.

The loss pieces are small pure functions on tensors (:func:`clipped_surrogate_terms`, :func:`token_mean_loss`,
:func:`constant_normalized_loss`, :func:`sequence_sum_loss`, :func:`take_groups_up_to`); the group filter of
DAPO is :func:`agents.algos.advantages.informative_groups`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.algos.advantages import ZERO_STD, group_normalized_advantages, informative_groups, sequence_returns
from agents.algos.critic_free import CriticFreeAlgorithm
from agents.buffers import Episode, SequenceBatch
from agents.policy import TransformerPolicy
from agents.rl_math import masked_mean
from text_envs.errors import ConfigError

#: The losses GRPO implements (see :class:`GRPO`).
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo")
#: DAPO's clip-higher ranges: the ratio is clipped to ``[1 - 0.2, 1 + 0.28]`` (Yu et al. 2025, arXiv 2503.14476).
DAPO_CLIP_RANGE_LOW = 0.2
DAPO_CLIP_RANGE_HIGH = 0.28


# ------------------------------------------------------------------------------------------ pure losses
def clipped_surrogate_terms(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                            clip_low: float | None, clip_high: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate to minimise, ``-min(rho A, clip(rho, 1 - low, 1 + high) A)``, and where the
    ratio ``rho = pi / pi_old`` lies outside ``[1 - low, 1 + high]``: ``(B, T) x 3 -> (B, T), (B, T) bool``.

    ``clip_low = clip_high = None``: no clipping, ``-A log pi`` (the plain policy gradient; nothing is clipped).
    Padding positions are not masked here: the reductions below mask them.
    """
    if clip_low is None or clip_high is None:
        return -(advantages * logp), torch.zeros_like(logp, dtype=torch.bool)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = advantages * ratio  # (B, T)
    clipped = advantages * ratio.clamp(1 - clip_low, 1 + clip_high)  # (B, T)
    outside = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)  # (B, T)
    return -torch.min(unclipped, clipped), outside


def token_mean_loss(terms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the per-token terms over all real tokens of the minibatch divided by their count (DAPO's
    token-level normalisation, and this library's GRPO): ``(B, T), (B, T) -> ()``."""
    return masked_mean(terms, mask)


def sequence_sum_loss(terms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token terms summed over each sequence, averaged over sequences (the textbook REINFORCE
    estimator, ``loss_reduction="sequence"``): ``(B, T), (B, T) -> ()``."""
    return (terms * mask.to(terms.dtype)).sum(-1).mean()


def constant_normalized_loss(terms: torch.Tensor, mask: torch.Tensor, max_completion_length: int) -> torch.Tensor:
    """Dr. GRPO's normalisation: the sum of the per-token terms over the minibatch's real tokens divided by
    the constant ``B * max_completion_length``, neither by each sequence's length nor by the token count
    (Liu et al. 2025, arXiv 2503.20783): ``(B, T), (B, T) -> ()``.

    :raises ConfigError: a sequence longer than ``max_completion_length`` (the constant must bound them).
    """
    if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int) \
            or max_completion_length < 1:
        raise ConfigError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
    longest = int(mask.sum(-1).max()) if mask.numel() else 0
    if longest > max_completion_length:
        raise ConfigError(f"a completion of {longest} tokens exceeds max_completion_length={max_completion_length}")
    return (terms * mask.to(terms.dtype)).sum() / (mask.shape[0] * max_completion_length)


def take_groups_up_to(groups: list[list[Episode]], target_tokens: int) -> tuple[list[list[Episode]], int]:
    """The first groups (in arrival order) until they hold at least ``target_tokens`` tokens, and how many
    groups are left over: DAPO's "first N informative groups" of its dynamic sampling, in tokens.
    ``target_tokens <= 0`` takes none; too few tokens takes them all."""
    taken: list[list[Episode]] = []
    tokens = 0
    for group in groups:
        if tokens >= target_tokens:
            break
        taken.append(group)
        tokens += sum(len(episode) for episode in group)
    return taken, len(groups) - len(taken)


def resolve_clip_ranges(loss_type: str, clip_range: float | None, clip_range_low: float | None,
                        clip_range_high: float | None) -> tuple[float | None, float | None]:
    """The ratio's clip ranges ``(low, high)``: the explicit ones, else ``clip_range`` (``"dapo"``: 0.2 /
    0.28, DAPO's clip-higher); ``(None, None)``: no clipping.

    :raises ConfigError: a range outside ``(0, 1)`` (low) or ``(0, inf)`` (high), or only one of them set
        without a ``clip_range``.
    """
    default_low, default_high = ((DAPO_CLIP_RANGE_LOW, DAPO_CLIP_RANGE_HIGH) if loss_type == "dapo"
                                 else (clip_range, clip_range))
    low = clip_range_low if clip_range_low is not None else default_low
    high = clip_range_high if clip_range_high is not None else default_high
    if (low is None) != (high is None):
        raise ConfigError(f"clip_range_low={clip_range_low!r} and clip_range_high={clip_range_high!r}: set both, or "
                          "a clip_range for the missing one")
    if low is None:
        return None, None
    if isinstance(low, bool) or not isinstance(low, (int, float)) or not 0 < low < 1:
        raise ConfigError(f"clip_range_low must be in (0, 1), got {low!r}")
    if isinstance(high, bool) or not isinstance(high, (int, float)) or not 0 < high < np.inf:
        raise ConfigError(f"clip_range_high must be a positive finite number, got {high!r}")
    return float(low), float(high)


def env_max_new_tokens(env: Any) -> int:
    """The completion budget (``max_new_tokens``) of a TextGen vec env.

    :raises ConfigError: an env that does not expose it (pass ``max_completion_length`` then).
    """
    try:
        batch = env.get_attr("batch")[0]
        return int(batch.max_new_tokens)
    except (AttributeError, IndexError, TypeError) as error:
        raise ConfigError(f"cannot read max_new_tokens from {type(env).__name__} ({error}): pass "
                          "max_completion_length") from None


# ------------------------------------------------------------------------------------------ algorithm
class GRPO(CriticFreeAlgorithm):
    """GRPO for language models on TextGen envs (same API as :class:`~agents.TokenPPO`), with the variants
    Dr. GRPO and DAPO as ``loss_type`` options.

    ``group_size = k`` completions of each prompt (the env's grouped resets, set up by the algorithm);
    every token of sequence ``i`` gets ``A_i = (R_i - mean_group R) / (std_group R + eps)``
    (without std scaling: ``R_i - mean_group R``), with PPO's clipped ratio.

    ``loss_type``:

    * ``"grpo"`` (default): advantages scaled by the group std; the clipped surrogate (ratio clipped to
      ``[1 - clip_range, 1 + clip_range]``) averaged over the minibatch's tokens (without clipping,
      ``loss_reduction`` picks the token mean or the per-sequence sum). This is the library's GRPO as it
      always was; note that it averages over all tokens of the minibatch, not first over each sequence's
      tokens as the GRPO paper's ``1/|o_i|`` does.
    * ``"dr_grpo"`` (Liu et al. 2025, arXiv 2503.20783): no std scaling (``scale_rewards`` must not be
      True) and no length normalisation: the per-token terms are summed and divided by the constant
      ``B * max_completion_length`` (:func:`constant_normalized_loss`; ``B`` the minibatch's sequences).
    * ``"dapo"`` (Yu et al. 2025, arXiv 2503.14476): advantages scaled by the group std; token-level
      normalisation over all tokens of the minibatch (:func:`token_mean_loss`); clip-higher, the ratio
      clipped to ``[1 - clip_range_low, 1 + clip_range_high]`` (default 0.2 / 0.28); and **dynamic
      sampling**: groups whose returns have zero variance (all completions equally good, so every
      advantage is 0) are dropped and do not count towards the batch. The kept groups wait in a pool,
      and the update happens once the pool holds at least ``n_steps * n_envs`` tokens (the size of one
      rollout: the batch is refilled from later rollouts with groups that carry a signal); the groups
      of the pool are taken in arrival order up to that size and the rest of the last rollout is
      discarded, as DAPO keeps its first N informative groups. No update happens while the pool fills,
      so the pooled groups are still on-policy when they are used. After ``max_refill_rollouts``
      rollouts the update uses the pool as it is (none if it is empty: DAPO's ``max_num_gen_batches``).
      The generated-token budget (``num_timesteps``) counts every generated token, dropped groups
      included. The variance is that of the KL-regularised returns ``R_i`` the advantages come from:
      with ``kl_coef = 0`` (DAPO's setting) exactly the groups of equal rewards; with ``kl_coef > 0`` a
      group is dropped only if its returns are equal too (e.g. identical completions).

    **KL.** The paper adds a ``beta * KL(pi || pi_ref)`` (k3) loss term. Here, as everywhere in this
    library, the KL is part of the reward: the env pays ``kl_coef * log pi_ref(a_t|s_t)`` per token
    and the algorithm adds ``-kl_coef * log pi_old(a_t|s_t)`` (same as TokenPPO), so ``R_i`` is the
    KL-regularised sequence return ``score - kl_coef * sum_t log(pi_old / pi_ref)`` and GRPO
    maximises ``E[score] - kl_coef * KL(pi || pi_ref)`` exactly; there is no separate KL loss, for any
    ``loss_type`` (DAPO drops the KL term altogether: use ``kl_coef=0`` for that).

    :param group_size: completions per prompt (``num_envs`` must be a multiple).
    :param clip_range: symmetric ratio clipping of ``"grpo"`` and ``"dr_grpo"`` (None: off).
    :param scale_rewards: divide by the group's standard deviation; None: the ``loss_type``'s choice
        (True for ``"grpo"`` and ``"dapo"``, False for ``"dr_grpo"``).
    :param eps: added to the standard deviation.
    :param loss_type: ``"grpo"``, ``"dr_grpo"`` or ``"dapo"`` (see above).
    :param clip_range_low: the ratio's lower clip ``1 - clip_range_low``; None: ``clip_range`` (``"dapo"``: 0.2).
    :param clip_range_high: the ratio's upper clip ``1 + clip_range_high``; None: ``clip_range`` (``"dapo"``: 0.28).
    :param max_completion_length: Dr. GRPO's constant; None: the env's ``max_new_tokens``.
    :param max_refill_rollouts: DAPO: most rollouts one update waits for (>= 1).
    Other parameters: see :class:`~agents.algos.base.SequenceOnPolicyAlgorithm`.
    """

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str,
                 learning_rate: float | Schedule = 5e-5, n_steps: int = 64, batch_size: int = 16, n_epochs: int = 2,
                 group_size: int = 4, clip_range: float | None = 0.2, scale_rewards: bool | None = None,
                 eps: float = 1e-4, loss_type: str = "grpo", clip_range_low: float | None = None,
                 clip_range_high: float | None = None, max_completion_length: int | None = None,
                 max_refill_rollouts: int = 10, loss_reduction: str = "token", ent_coef: float = 0.0,
                 max_grad_norm: float = 1.0, kl_coef: float | None = None, kl_target: float | None = None,
                 kl_horizon: int = 10_000, tensorboard_log: str | None = None,
                 policy_kwargs: dict[str, Any] | None = None, verbose: int = 0, seed: int | None = None,
                 device: torch.device | str = "auto", _init_setup_model: bool = True) -> None:
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if isinstance(group_size, int) and not isinstance(group_size, bool) and group_size == 1:
            raise ConfigError("GRPO needs group_size >= 2 (its advantages are relative to the group), got 1")
        if scale_rewards is None:
            scale_rewards = loss_type != "dr_grpo"
        elif loss_type == "dr_grpo" and scale_rewards:
            raise ConfigError("loss_type='dr_grpo' removes the std scaling of the advantages: scale_rewards=True "
                              "contradicts it (leave it None or False)")
        if isinstance(max_refill_rollouts, bool) or not isinstance(max_refill_rollouts, int) \
                or max_refill_rollouts < 1:
            raise ConfigError(f"max_refill_rollouts must be a positive int, got {max_refill_rollouts!r}")
        if max_completion_length is not None and (isinstance(max_completion_length, bool)
                                                  or not isinstance(max_completion_length, int)
                                                  or max_completion_length < 1):
            raise ConfigError(f"max_completion_length must be a positive int or None, got {max_completion_length!r}")
        self.loss_type = loss_type
        self.scale_rewards = bool(scale_rewards)
        self.eps = eps
        self.clip_range_low, self.clip_range_high = resolve_clip_ranges(loss_type, clip_range, clip_range_low,
                                                                        clip_range_high)
        self.max_completion_length = max_completion_length
        self.max_refill_rollouts = max_refill_rollouts
        self._dapo_pool: list[list[Episode]] = []  # informative groups waiting for the next DAPO update
        self._dapo_rollouts = 0  # rollouts whose groups are in the pool
        self._rollout_episodes: list[Episode] | None = None  # DAPO: the rollout the update's logging is about
        super().__init__(policy, env, learning_rate, n_steps, batch_size, n_epochs, clip_range, ent_coef,
                         max_grad_norm, loss_reduction, group_size, kl_coef, kl_target, kl_horizon, tensorboard_log,
                         policy_kwargs, verbose, seed, device, _init_setup_model)
        if loss_type == "dr_grpo" and self.max_completion_length is None and self.env is not None:
            self.max_completion_length = env_max_new_tokens(self.env)

    # ----------------------------------------------------------------------------------- advantages
    def sequence_advantages(self, returns: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages, scaled by the group std unless ``scale_rewards`` is off: ``(N,) -> (N,)``."""
        advantages = group_normalized_advantages(returns, self.group_size, self.scale_rewards, self.eps)
        grouped = returns.view(-1, self.group_size)  # (G, k)
        self.logger.record("train/zero_std_groups", float((grouped.std(-1) < ZERO_STD).float().mean()))
        return advantages

    def policy_loss_normaliser(self) -> str:
        """``"sequence"`` for Dr. GRPO (``B * max_completion_length``) and the unclipped per-sequence sum,
        ``"token"`` otherwise (see :meth:`policy_loss`)."""
        if self.loss_type == "dr_grpo" or (self.loss_type == "grpo" and self.clip_range_low is None
                                           and self.loss_reduction == "sequence"):
            return "sequence"
        return "token"

    def check_distributed(self) -> None:
        """DAPO's dynamic sampling decides per rank when to update: not data-parallel (yet).

        :raises ConfigError: ``loss_type="dapo"``.
        """
        if self.loss_type == "dapo":
            raise ConfigError("loss_type='dapo' (dynamic sampling) does not run data-parallel; use 'grpo' or "
                              "'dr_grpo' under torchrun")

    def policy_loss(self, logprobs: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch's policy loss for :attr:`loss_type` and its clip fraction (see the class docstring)."""
        mask = batch.completion_mask  # (B, T)
        terms, outside = clipped_surrogate_terms(logprobs, batch.old_logprobs, batch.advantages,
                                                 self.clip_range_low, self.clip_range_high)  # (B, T)
        clip_fraction = masked_mean(outside.float(), mask)
        if self.loss_type == "dr_grpo":
            return constant_normalized_loss(terms, mask, self._completion_length()), clip_fraction
        if self.loss_type == "grpo" and self.clip_range_low is None and self.loss_reduction == "sequence":
            return sequence_sum_loss(terms, mask), clip_fraction
        return token_mean_loss(terms, mask), clip_fraction

    def _completion_length(self) -> int:
        if self.max_completion_length is None:
            if self.env is None:
                raise ConfigError("loss_type='dr_grpo' needs max_completion_length (or an env to read it from)")
            self.max_completion_length = env_max_new_tokens(self.env)
        return self.max_completion_length

    # ---------------------------------------------------------------------------------------- train
    def train(self) -> None:
        """One update (``"dapo"``: once the pool of informative groups holds a rollout's worth of tokens)."""
        if self.loss_type != "dapo":
            super().train()
            return
        buffer = self.rollout_buffer
        rollout = buffer.episodes
        rewards, mask = buffer.total_rewards()  # (N, T)
        keep = informative_groups(sequence_returns(rewards, mask), self.group_size)  # (G,)
        k = self.group_size
        groups = [rollout[g * k:(g + 1) * k] for g in range(len(keep))]
        self._dapo_pool.extend(group for group, kept in zip(groups, keep.tolist()) if kept)
        self._dapo_rollouts += 1
        target = self.n_steps * self.n_envs
        pooled = sum(len(episode) for group in self._dapo_pool for episode in group)
        self.logger.record("train/dapo_dropped_groups", int((~keep).sum()))
        self.logger.record("train/dapo_pool_tokens", pooled)
        if pooled < target and self._dapo_rollouts < self.max_refill_rollouts:
            self.logger.record("train/dapo_deferred", 1)
            self.finish_update(rollout)  # every sampled sequence is logged (and KL-controlled) exactly once
            return
        selected, discarded = take_groups_up_to(self._dapo_pool, target)
        self._dapo_pool, self._dapo_rollouts = [], 0
        self.logger.record("train/dapo_deferred", 0)
        self.logger.record("train/dapo_discarded_groups", discarded)
        if not selected:  # no informative group in max_refill_rollouts rollouts: nothing to learn from
            self.finish_update(rollout)
            return
        buffer.episodes = [episode for group in selected for episode in group]
        self._rollout_episodes = rollout
        try:
            super().train()
        finally:
            self._rollout_episodes = None

    def finish_update(self, episodes: list[Episode]) -> None:
        """As the base class, but a DAPO update logs the rollout just sampled (all of it, dropped groups
        included), not the pooled groups it trained on (logged when they were sampled)."""
        super().finish_update(self._rollout_episodes if self._rollout_episodes is not None else episodes)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_rollout_episodes"]

