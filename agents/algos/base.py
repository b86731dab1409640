"""``SequenceOnPolicyAlgorithm``: the rollout and sequence-evaluation machinery shared by TokenPPO and the
critic-free algorithms. Subclasses implement only ``train()`` (their loss)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from agents.buffers import Episode, SequenceBatch, SequenceRolloutBuffer
from agents.kl_control import AdaptiveKLController, FixedKLController
from agents.lora import share_reference
from agents.policy import TransformerPolicy
from agents.rl_math import logprobs_and_entropy
from text_envs.errors import ConfigError


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
    :param seed: random seed.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    """

    policy_aliases = {"TransformerPolicy": TransformerPolicy}
    #: Episodes per prompt group in the rollout buffer (critic-free algorithms set ``k > 1``: the buffer
    #: then holds only complete groups, see :class:`~agents.buffers.SequenceRolloutBuffer`).
    rollout_group_size: int = 1
    policy: TransformerPolicy
    rollout_buffer: SequenceRolloutBuffer  # type: ignore[assignment]

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
        return result

    # -------------------------------------------------------------------------------------- rollouts
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: SequenceRolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Step ``env`` with the (KV-cached) policy until finished episodes hold ``n_rollout_steps * n_envs``
        tokens. Returns False if a callback asked to stop."""
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        target = n_rollout_steps * env.num_envs
        while rollout_buffer.num_tokens < target:
            with torch.no_grad():
                actions, values, log_probs = self.policy(obs_as_tensor(self._last_obs, self.device))
            actions_np = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions_np)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            rollout_buffer.add(self._last_obs, actions_np, log_probs.cpu().numpy(), values.flatten().cpu().numpy(),
                               rewards, dones, infos, self.kl_coef)
            self._last_obs = new_obs
            self._last_episode_starts = dones
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------------------------- updates
    def evaluate_batch(self, batch: SequenceBatch,
                       entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One teacher-forced forward over a minibatch: ``logprobs (B, T)``, ``entropy (B, T)``, ``values (B, T)``.
        ``entropy_grad=False`` returns the entropy without gradient (when it is only logged)."""
        logits, values = self.policy.evaluate_sequences(batch.input_ids, batch.attention_mask,
                                                        batch.actions.shape[1])
        logprobs, entropy = logprobs_and_entropy(logits, batch.actions, entropy_grad)
        return logprobs, entropy, values

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
        mean_kl = float(np.nanmean(kls)) if np.isfinite(kls).any() else float("nan")
        self.logger.record("objective/score", float(np.nanmean(scores)))
        self.logger.record("objective/kl", mean_kl)
        self.logger.record("objective/kl_coef", self.kl_coef)
        self.logger.record("objective/kl_penalized_return",
                           float(np.nanmean(scores)) - self.kl_coef * (mean_kl if np.isfinite(mean_kl) else 0.0))
        sample = episodes[0].info
        self.logger.record("samples/text", f"{sample.get('prompt', '')!r} -> {sample.get('text', '')!r}",
                           exclude=("stdout", "log", "json", "csv"))
        new_coef = self.kl_controller.update(mean_kl, sum(len(e) for e in episodes))
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
        return [*super()._excluded_save_params(), "_shuffle_rng"]
