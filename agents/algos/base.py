"""``SequenceOnPolicyAlgorithm``: the rollout and sequence-evaluation machinery shared by TokenPPO and the
critic-free algorithms. Subclasses implement only ``train()`` (their loss)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from agents import distributed
from agents.buffers import Episode, SequenceBatch, SequenceRolloutBuffer
from agents.kl_control import AdaptiveKLController, FixedKLController
from agents.lora import share_reference
from agents.policy import TransformerPolicy
from agents.rl_math import logprobs_and_entropy
from text_envs.errors import ConfigError


class LossScales(NamedTuple):
    """Factors turning a rank's local mean losses into its share of the global minibatch's mean
    (:func:`agents.distributed.loss_scale`): for losses averaged over tokens and over sequences."""

    token: float
    sequence: float


class SequenceOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Base class of the sequence-level on-policy algorithms (an SB3 ``OnPolicyAlgorithm``).

    * Rollouts go through the policy's KV-cached stepping and the batched env; finished episodes
      are kept whole in a :class:`~agents.buffers.SequenceRolloutBuffer`.
    * :meth:`evaluate_batch` evaluates every token of a minibatch of sequences in one forward.
    * The KL coefficient is shared with the env (``kl_coef`` attribute): the env pays
      ``kl_coef * log pi_ref``, the algorithm adds ``-kl_coef * log pi_old``; an optional adaptive
      controller (``kl_target``) updates both after every rollout.

    :param policy: the policy class (``TransformerPolicy``) or its alias ``"TransformerPolicy"``.
    :param env: a TextGen vector env (``agents.make_text_vec_env``) or any SB3-compatible TextGen env.
    :param learning_rate: learning rate (or schedule).
    :param n_steps: tokens generated per env slot in a rollout (a rollout ends once the finished
        episodes hold at least ``n_steps * n_envs`` tokens).
    :param batch_size: minibatch size in *sequences*.
    :param n_epochs: passes over a rollout.
    :param gamma: discount factor.
    :param gae_lambda: GAE lambda.
    :param ent_coef: entropy bonus coefficient.
    :param vf_coef: value loss coefficient.
    :param max_grad_norm: gradient clipping norm.
    :param kl_coef: KL coefficient; None reads the env's.
    :param kl_target: target KL per sequence for the adaptive controller; None keeps ``kl_coef`` fixed.
    :param kl_horizon: horizon (in tokens) of the adaptive controller.
    :param tensorboard_log: TensorBoard log folder.
    :param policy_kwargs: policy constructor arguments (e.g. ``{"model": "tiny"}``).
    :param verbose: 0 quiet, 1 info.
    :param seed: random seed (under ``torchrun`` give each rank its own: :func:`agents.distributed.rank_seed`).
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``.

    **Data parallel.** In a ``torch.distributed`` process group of several ranks (``torchrun``, see
    :mod:`agents.distributed`), each rank collects its own rollouts; the updates run through
    ``DistributedDataParallel``, the loss normalisers, advantage whitening, KL statistics (hence the
    adaptive KL coefficient) and the generated-token count are reduced over the ranks, and every rank
    draws the same number of minibatches per epoch (a rank short of sequences contributes an empty one),
    so all ranks take the same step; ``batch_size`` is per rank. Without a process group nothing changes.
    """

    policy_aliases = {"TransformerPolicy": TransformerPolicy}
    #: Episodes per prompt group in the rollout buffer (critic-free algorithms set ``k > 1``: the buffer
    #: then holds only complete groups, see :class:`~agents.buffers.SequenceRolloutBuffer`).
    rollout_group_size: int = 1
    policy: TransformerPolicy
    rollout_buffer: SequenceRolloutBuffer  # type: ignore[assignment]
    #: The policy's sequence evaluation wrapped in ``DistributedDataParallel`` (None in a single process).
    _ddp: nn.Module | None = None
    #: Whether the update trains the value head (False: DDP must look for parameters without gradient).
    trains_value_head: bool = True

    def __init__(self, policy: str | type[TransformerPolicy], env: GymEnv | str, learning_rate: float | Schedule,
                 n_steps: int, batch_size: int, n_epochs: int, gamma: float, gae_lambda: float, ent_coef: float,
                 vf_coef: float, max_grad_norm: float, kl_coef: float | None, kl_target: float | None,
                 kl_horizon: int, tensorboard_log: str | None, policy_kwargs: dict[str, Any] | None, verbose: int,
                 seed: int | None, device: torch.device | str, _init_setup_model: bool) -> None:
        for name, value in (("n_steps", n_steps), ("batch_size", batch_size), ("n_epochs", n_epochs)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        super().__init__(policy, env, learning_rate=learning_rate, n_steps=n_steps, gamma=gamma,
                         gae_lambda=gae_lambda, ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         use_sde=False, sde_sample_freq=-1, tensorboard_log=tensorboard_log,
                         policy_kwargs=policy_kwargs, verbose=verbose, seed=seed, device=device,
                         _init_setup_model=False, supported_action_spaces=(spaces.Discrete,))
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        # without an env (SB3's ``load(path)`` for predict / evaluate_policy) the saved kl_coef is restored by load
        env_coef = float(self.env.get_attr("kl_coef")[0]) if self.env is not None else 0.0
        self.kl_coef = env_coef if kl_coef is None else float(kl_coef)
        if self.env is not None and kl_coef is not None and kl_coef != env_coef:
            self.env.set_attr("kl_coef", self.kl_coef)
        self.kl_target, self.kl_horizon = kl_target, kl_horizon
        self.kl_controller = (AdaptiveKLController(self.kl_coef, kl_target, kl_horizon) if kl_target is not None
                              else FixedKLController(self.kl_coef))
        self._shuffle_rng = np.random.default_rng(seed)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        **self.policy_kwargs)
        self.policy = self.policy.to(self.device)
        share_reference(self)  # a LoRA policy's base is the reference of an env created with reference '<policy>'
        pad_id = int(self.policy.tokenizer.pad_token_id)
        self.rollout_buffer = SequenceRolloutBuffer(self.n_envs, pad_id, self.device,
                                                    group_size=self.rollout_group_size)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:  # same signature as SB3's
        previous_obs = self._last_obs
        result = super()._setup_learn(*args, **kwargs)
        if self._last_obs is not previous_obs:  # SB3 reset the env: in-progress episodes are gone
            self.rollout_buffer.discard_running()
        if distributed.is_distributed():
            self.ddp_module()  # built before the first rollout: every rank starts from rank 0's weights
        return result

    def check_distributed(self) -> None:
        """Raise :class:`~text_envs.errors.ConfigError` if this configuration cannot train data-parallel
        (subclasses add their own restrictions)."""

    def ddp_module(self) -> nn.Module:
        """The policy's sequence evaluation under ``DistributedDataParallel`` (built on first use; building
        it broadcasts rank 0's weights)."""
        if self._ddp is None:
            self.check_distributed()
            self._ddp = distributed.wrap_ddp(self.policy, trains_value_head=self.trains_value_head)
        return self._ddp

    # -------------------------------------------------------------------------------------- rollouts
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: SequenceRolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Step ``env`` with the (KV-cached) policy until finished episodes hold ``n_rollout_steps * n_envs``
        tokens. Returns False if a callback asked to stop."""
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        target = n_rollout_steps * env.num_envs
        start, stopped = self.num_timesteps, False
        while rollout_buffer.num_tokens < target:
            with torch.no_grad():
                actions, values, log_probs = self.policy(obs_as_tensor(self._last_obs, self.device))
            actions_np = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions_np)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                if not distributed.is_distributed():
                    return False
                stopped = True
                break
            self._update_info_buffer(infos, dones)
            rollout_buffer.add(self._last_obs, actions_np, log_probs.cpu().numpy(), values.flatten().cpu().numpy(),
                               rewards, dones, infos, self.kl_coef)
            self._last_obs = new_obs
            self._last_episode_starts = dones
        if distributed.is_distributed():  # every rank counts the tokens of all ranks and stops together
            totals = distributed.all_reduce_sum(torch.tensor([self.num_timesteps - start, int(stopped)],
                                                             dtype=torch.float64))
            self.num_timesteps = start + int(totals[0])
            if totals[1] > 0:
                return False
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------------------------- updates
    def evaluate_batch(self, batch: SequenceBatch,
                       entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One teacher-forced forward over a minibatch: ``logprobs (B, T)``, ``entropy (B, T)``, ``values (B, T)``.
        ``entropy_grad=False`` returns the entropy without gradient (when it is only logged)."""
        if distributed.is_distributed():  # through DDP, which averages the gradients over the ranks
            logits, values = self.ddp_module()(batch.input_ids, batch.attention_mask, batch.actions.shape[1],
                                               batch.action_positions)
        else:
            logits, values = self.policy.evaluate_sequences(batch.input_ids, batch.attention_mask,
                                                            batch.actions.shape[1], batch.action_positions)
        logprobs, entropy = logprobs_and_entropy(logits, batch.actions, entropy_grad)
        return logprobs, entropy, values

    def update_minibatches(self) -> Iterator[tuple[SequenceBatch, LossScales | None]]:
        """The minibatches of one epoch over the rollout buffer, each with its :class:`LossScales` (None in a
        single process, where this is exactly ``rollout_buffer.minibatches``).

        Data-parallel: every rank yields the same number of minibatches (the most any rank has; a rank
        short of sequences yields an empty one: a real sequence with an all-zero completion mask, so DDP
        still sees every parameter and its loss is 0), and the scales use the global minibatch's counts.
        """
        buffer = self.rollout_buffer
        if not distributed.is_distributed():
            for batch in buffer.minibatches(self.batch_size, self._shuffle_rng):
                yield batch, None
            return
        if not buffer.episodes:
            raise ConfigError("data-parallel update on a rank without sequences")
        chunks = buffer.minibatch_indices(self.batch_size, self._shuffle_rng)
        n_batches = int(distributed.all_reduce_max(torch.tensor([len(chunks)], dtype=torch.int64))[0])
        chunks += [[] for _ in range(n_batches - len(chunks))]
        local = torch.tensor([[sum(len(buffer.episodes[i]) for i in chunk), len(chunk)] for chunk in chunks],
                             dtype=torch.float64)  # (M, 2): tokens, sequences
        totals = distributed.all_reduce_sum(local.clone())
        for chunk, (tokens, sequences), (all_tokens, all_sequences) in zip(chunks, local.tolist(), totals.tolist()):
            if chunk:
                batch = buffer.collate(chunk)
            else:
                batch = buffer.collate([0])
                batch = batch._replace(completion_mask=torch.zeros_like(batch.completion_mask))
            yield batch, LossScales(distributed.loss_scale(tokens, all_tokens),
                                    distributed.loss_scale(sequences, all_sequences))

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """Backward, clip gradients, step; returns the gradient norm."""
        self.policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        return float(norm)

    def finish_update(self, episodes: list[Episode]) -> None:
        """Log the objective of the rollout and update the KL coefficient (in the env and here)."""
        scores = [float(e.info.get("score", np.nan)) for e in episodes]
        kls = [e.kl for e in episodes]
        n_tokens = sum(len(e) for e in episodes)
        if distributed.is_distributed():  # the statistics of every rank's rollout: the same coefficient everywhere
            mean_score, mean_kl, n_tokens = _global_rollout_statistics(scores, kls, n_tokens)
        else:
            mean_score = float(np.nanmean(scores))
            mean_kl = float(np.nanmean(kls)) if np.isfinite(kls).any() else float("nan")
        self.logger.record("objective/score", mean_score)
        self.logger.record("objective/kl", mean_kl)
        self.logger.record("objective/kl_coef", self.kl_coef)
        self.logger.record("objective/kl_penalized_return",
                           mean_score - self.kl_coef * (mean_kl if np.isfinite(mean_kl) else 0.0))
        sample = episodes[0].info
        self.logger.record("samples/text", f"{sample.get('prompt', '')!r} -> {sample.get('text', '')!r}",
                           exclude=("stdout", "log", "json", "csv"))
        new_coef = self.kl_controller.update(mean_kl, n_tokens)
        if new_coef != self.kl_coef:
            self.kl_coef = new_coef
            self.env.set_attr("kl_coef", new_coef)

    def learn(self, total_timesteps: int, callback: Any = None, log_interval: int = 1, tb_log_name: str = "",
              reset_num_timesteps: bool = True, progress_bar: bool = False) -> "SequenceOnPolicyAlgorithm":
        """Train for ``total_timesteps`` generated tokens (see SB3's ``learn``); the losses of the last
        update are written to the logger too. ``progress_bar`` counts generated tokens
        (:class:`~agents.callbacks.TokenProgressBar`)."""
        from agents.callbacks import with_progress_bar

        callback = with_progress_bar(callback) if progress_bar else callback
        super().learn(total_timesteps=total_timesteps, callback=callback, log_interval=log_interval,
                      tb_log_name=tb_log_name or type(self).__name__, reset_num_timesteps=reset_num_timesteps,
                      progress_bar=False)
        self.logger.dump(step=self.num_timesteps)
        return self

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_shuffle_rng", "_ddp"]


def _global_rollout_statistics(scores: list[float], kls: list[float], n_tokens: int) -> tuple[float, float, int]:
    """Mean score and mean sequence KL (NaN-skipping, NaN when nothing is finite) over the episodes of every
    rank, and the total token count."""
    score_values, kl_values = np.asarray(scores, dtype=float), np.asarray(kls, dtype=float)
    finite_scores, finite_kls = np.isfinite(score_values), np.isfinite(kl_values)
    totals = distributed.all_reduce_sum(torch.tensor([
        score_values[finite_scores].sum(), finite_scores.sum(), kl_values[finite_kls].sum(), finite_kls.sum(),
        n_tokens], dtype=torch.float64)).tolist()
    mean_score = totals[0] / totals[1] if totals[1] else float("nan")
    mean_kl = totals[2] / totals[3] if totals[3] else float("nan")
    return mean_score, mean_kl, int(totals[4])
