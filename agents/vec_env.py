"""``TextGenVecEnv``: the natively batched TextGen vector env as a stable-baselines3 ``VecEnv``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

import text_envs  # noqa: F401  (registers TextGen-v0)
from agents.rl_math import filter_mask
from text_envs.errors import ConfigError
from text_envs.vector_env import TextGenVectorEnv


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (SB3 infos hold plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def vector_info_entry(value: Any, index: int) -> Any:
    """Sub-env ``index``'s entry of a Gymnasium vector info value; a nested dict (e.g. a responder's info) is
    batched key by key, with ``_key`` masks saying which sub-envs have the key."""
    if isinstance(value, dict):
        return {key: vector_info_entry(item, index) for key, item in value.items()
                if not key.startswith("_") and bool(value.get(f"_{key}", np.ones(index + 1, dtype=bool))[index])}
    return _plain(value[index])


class TextGenVecEnv(VecEnv):
    """Adapts a :class:`~text_envs.vector_env.TextGenVectorEnv` (same-step autoreset) to SB3's ``VecEnv``.

    ``infos[i]`` of a finished episode holds ``terminal_observation`` (SB3's key), the env's final
    info (``score``, ``text``, ``prompt``, ``kl_ref_logprob_sum``...) and an ``episode`` entry
    (``r``: return, ``l``: length, ``t``: time) as SB3's ``Monitor`` writes it, so ``ep_rew_mean``
    and ``ep_len_mean`` are logged.

    :param env: the vector env to adapt.
    :param mask_top_k: for ``MaskablePPO``: ``action_masks()`` keeps only the reference model's
        ``mask_top_k`` most likely next tokens (0: off).
    :param mask_top_p: for ``MaskablePPO``: keeps the reference model's nucleus of mass ``mask_top_p``
        (1: off). Masks need a reference model (``kl_coef > 0``).
    :param reset_options: options passed to every ``reset`` (e.g. ``{"group_size": 4}``).
    """

    def __init__(self, env: TextGenVectorEnv, mask_top_k: int = 0, mask_top_p: float = 1.0,
                 reset_options: dict[str, Any] | None = None) -> None:
        if not isinstance(env.unwrapped, TextGenVectorEnv):
            raise ConfigError(f"TextGenVecEnv adapts a TextGenVectorEnv, got {type(env).__name__}")
        if not (isinstance(mask_top_k, int) and mask_top_k >= 0) or not 0 < mask_top_p <= 1:
            raise ConfigError(f"mask_top_k must be an int >= 0 and mask_top_p in (0, 1], got {mask_top_k!r}, "
                              f"{mask_top_p!r}")
        self.env = env.unwrapped
        self.mask_top_k, self.mask_top_p = mask_top_k, mask_top_p
        self.reset_options = dict(reset_options or {})
        super().__init__(self.env.num_envs, self.env.single_observation_space, self.env.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> VecEnvObs:
        """Reset every sub-env (seeded by :meth:`seed` if it was called)."""
        seeds = [s for s in self._seeds] if any(s is not None for s in self._seeds) else None
        obs, info = self.env.reset(seed=seeds, options=self.reset_options or None)
        self._reset_seeds()
        self._returns[:] = 0
        self._lengths[:] = 0
        self.reset_infos = [{"prompt": str(p)} for p in info["prompt"]]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions  # validated by the env (shape (num_envs,), integer ids in the vocabulary)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        self._returns += rewards
        self._lengths += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(terminated | truncated):
            final = dict(info["final_info"]) if "final_info" in info else {}
            infos[i] = {key: vector_info_entry(value, i) for key, value in final.items() if not key.startswith("_")}
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]),
                                   "t": round(time.time() - self._start, 6)}
            self._returns[i] = 0
            self._lengths[i] = 0
        return obs, rewards.astype(np.float32), terminated | truncated, infos

    def get_state(self) -> dict[str, Any]:
        """The batched env's state plus this adapter's episode returns and lengths (for checkpoints)."""
        return {"env": self.env.get_state(), "returns": self._returns.copy(), "lengths": self._lengths.copy(),
                "reset_options": dict(self.reset_options)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s result."""
        self.env.set_state(state["env"])
        self._returns, self._lengths = state["returns"].copy(), state["lengths"].copy()
        self.reset_options = dict(state["reset_options"])
        self._reset_seeds()  # seeds given since (SB3 seeds at construction) were for a reset that happened long ago

    def action_masks(self) -> np.ndarray:
        """``(num_envs, vocab_size)`` boolean masks from the reference model's top-k / top-p (NLPO-style)."""
        if self.env.batch.stepper is None:
            raise ConfigError("action masks come from the reference model's next-token distribution, stepped "
                              "each token: create the env with kl_coef > 0 and kl_penalty='dense'")
        logprobs = self.env.batch.ref_logprobs
        if logprobs is None:
            raise ConfigError("action_masks() before reset(): call reset() first")
        if not self.mask_top_k and self.mask_top_p >= 1:
            return np.ones((self.num_envs, self.action_space.n), dtype=bool)
        with torch.no_grad():
            return filter_mask(logprobs, self.mask_top_k, self.mask_top_p).cpu().numpy()

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """All sub-envs share one batched env: the attribute is read from it for every index
        (``action_masks`` is the adapter's own method)."""
        source = self if attr_name == "action_masks" else self.env
        return [getattr(source, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute (e.g. ``kl_coef``) on the batched env; it applies to every sub-env."""
        if len(self._get_indices(indices)) != self.num_envs:
            raise ConfigError(f"{attr_name} is shared by all sub-envs of a TextGenVecEnv: set it for all of them")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method; ``action_masks`` is answered per sub-env, others once on the batched env."""
        count = len(self._get_indices(indices))
        if method_name == "action_masks":
            return list(self.action_masks()[list(self._get_indices(indices))])
        return [getattr(self.env, method_name)(*method_args, **method_kwargs)] * count

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices) if isinstance(indices, Iterable) else [indices]


#: The natively batched envs :func:`make_text_vec_env` builds.
ENV_IDS = ("TextGen-v0", "TextChat-v0")


def make_text_vec_env(num_envs: int = 8, mask_top_k: int = 0, mask_top_p: float = 1.0,
                      reset_options: dict[str, Any] | None = None,
                      env_kwargs: dict[str, Any] | None = None, env_id: str = "TextGen-v0") -> TextGenVecEnv:
    """``gym.make_vec(env_id, num_envs, **env_kwargs)`` wrapped as an SB3 ``VecEnv`` (``env_id``: ``"TextGen-v0"``
    or the multi-turn ``"TextChat-v0"``).

    Example::

        from stable_baselines3 import PPO
        from agents import TransformerPolicy, make_text_vec_env

        env = make_text_vec_env(8, env_kwargs={"task": "sentiment", "model": "tiny"})
        PPO(TransformerPolicy, env, policy_kwargs={"model": "tiny"}).learn(4096)
    """
    if env_id not in ENV_IDS:
        raise ConfigError(f"env_id must be one of {ENV_IDS}, got {env_id!r}")
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {}))
    return TextGenVecEnv(vector, mask_top_k=mask_top_k, mask_top_p=mask_top_p, reset_options=reset_options)
