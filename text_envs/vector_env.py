"""The natively batched ``TextGen-v0`` vector env (``gym.make_vec("TextGen-v0", num_envs=N)``)."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from transformers import PreTrainedModel

from text_envs.config import RewardSpec, TextGenConfig, parse_reset_options
from text_envs.env import TextGenBase, observation_space
from text_envs.episode_batch import Restart
from text_envs.errors import ConfigError
from text_envs.rendering import render_text_image
from text_envs.tasks import Task
from text_envs.validation import MAX_NUM_ENVS, check_int, check_seed

VECTOR_RESET_OPTIONS = ("prompt", "prompts", "split", "group_size")


class TextGenVectorEnv(TextGenBase, VectorEnv):
    """``num_envs`` TextGen episodes stepped together, with one batched reference model.

    Same observations, rewards and episode ends as ``num_envs`` :class:`~text_envs.env.TextGenEnv`
    seeded ``seed, seed + 1, ...`` (sub-env ``i`` draws its prompts with its own generator), but
    each step makes **one** batched, KV-cached reference-model forward for all sub-envs, and
    **one** batched reward-model call for all sequences that finished on that step.

    **Autoreset** (``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``): a sub-env whose
    episode ends is reset within the same ``step`` call. The returned observation is then the
    first observation of the new episode; the last observation and info of the finished episode
    are in ``info["final_obs"][i]`` and ``info["final_info"]`` (with mask
    ``info["_final_info"]``), as Gymnasium's ``SyncVectorEnv`` reports them in this mode and as
    stable-baselines3's ``VecEnv`` expects.

    **Grouped resets**: ``reset(options={"group_size": k})`` (``num_envs`` must be a multiple of
    ``k``) makes consecutive groups of ``k`` sub-envs share one prompt, drawn by the group's first
    sub-env, and keeps doing so at every autoreset: a group finishes together only by chance, so
    each sub-env of a group draws its next prompt from the group's shared generator in order of
    episode count. This is what critic-free algorithms (RLOO, GRPO) need: ``k`` completions of the
    same prompt in one batch. ``reset(options={"prompts": [...]})`` forces one prompt per sub-env.

    Arguments are those of :class:`~text_envs.env.TextGenEnv` plus ``num_envs``.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}
    #: ``reset(options=...)`` keys of the vector env.
    vector_reset_option_names: tuple[str, ...] = VECTOR_RESET_OPTIONS

    def __init__(self, num_envs: int = 1, model: str | PreTrainedModel = "tiny", task: str | Task = "sentiment",
                 reward_model: RewardSpec = None, reward_kwargs: Mapping[str, Any] | None = None,
                 kl_coef: float = 0.05, kl_penalty: str = "dense", max_new_tokens: int | None = None,
                 max_prompt_tokens: int | None = None, reference_model: str | PreTrainedModel | None = None,
                 device: str = "auto", dtype: str = "auto", render_mode: str | None = None,
                 verbose: bool = False, prompt_format: str = "auto") -> None:
        num_envs = check_int("num_envs", num_envs, 1, MAX_NUM_ENVS)
        config = TextGenConfig(model=model, task=task, reward_model=reward_model, reward_kwargs=reward_kwargs,
                               kl_coef=kl_coef, kl_penalty=kl_penalty, max_new_tokens=max_new_tokens,
                               max_prompt_tokens=max_prompt_tokens, reference_model=reference_model,
                               device=device, dtype=dtype, verbose=verbose, prompt_format=prompt_format)
        self._init_vector(config, num_envs, render_mode)

    def _init_vector(self, config: Any, num_envs: int, render_mode: str | None) -> None:
        self.num_envs = num_envs
        self._setup(config, batch_size=num_envs, render_mode=render_mode)
        self.single_action_space = spaces.Discrete(self.batch.vocab_size)
        self.single_observation_space = observation_space(self.batch.vocab_size, self.batch.window)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.spec = None
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._split = "train"
        self._group_size = 1
        self._group_queues: dict[int, list[str]] = {}
        self._episode_counts = [0] * num_envs

    # ----------------------------------------------------------------------------------------- reset
    def reset(self, *, seed: int | list[int] | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every sub-env. ``seed``: int (sub-env ``i`` gets ``seed + i``) or a list of seeds.
        ``options``: ``split``, ``prompt`` (all sub-envs), ``prompts`` (one each), ``group_size``.

        Seeds, options and prompts are all validated before anything changes; the new generators, split,
        groups and prompts are computed aside and committed only once every prompt has encoded, so a
        rejected call leaves every sub-env, generator and option as it was.
        """
        self._check_open("reset")
        seeds = self._seeds(seed)
        opts = parse_reset_options(options, self.vector_reset_option_names)
        group_size = self._validate_group_size(opts.get("group_size", 1))
        if "prompts" in opts and len(opts["prompts"]) != self.num_envs:
            raise ConfigError(f"reset option prompts needs {self.num_envs} prompts, got {len(opts['prompts'])}")
        saved = (self._rngs, self._split, self._group_size, self._group_queues, self._episode_counts)
        self._rngs = ([seeding.np_random(s)[0] for s in seeds] if seeds is not None
                      else [copy.deepcopy(rng) for rng in self._rngs])
        self._split, self._group_size = opts["split"], group_size
        self._group_queues, self._episode_counts = {}, [0] * self.num_envs
        try:
            specs = self._forced_specs(opts)
            if specs is None:
                specs = [self._next_prompt(i) for i in range(self.num_envs)]
            restart = self.batch.prepare(list(range(self.num_envs)), specs, self._split)
            self.batch.start(list(range(self.num_envs)), *restart)
        except BaseException:
            self._rngs, self._split, self._group_size, self._group_queues, self._episode_counts = saved
            raise
        return self.batch.observations(), self._reset_infos(restart.prompts)

    def _forced_specs(self, opts: dict[str, Any]) -> list[Any] | None:
        """The episode starts forced by reset options (``prompts``/``prompt``), or None."""
        if "prompts" in opts:
            return list(opts["prompts"])
        if "prompt" in opts:
            return [opts["prompt"]] * self.num_envs
        return None

    def _reset_infos(self, prompts: list[str]) -> dict[str, Any]:
        return {"prompt": np.array(prompts, dtype=object), "_prompt": np.ones(self.num_envs, dtype=bool)}

    def _seeds(self, seed: int | list[int] | None) -> list[int] | None:
        if seed is None:
            return None
        if not isinstance(seed, (list, tuple, np.ndarray)):
            first = check_seed("seed", seed)
            check_seed("seed + num_envs - 1", first + self.num_envs - 1)
            return [first + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ConfigError(f"seed list needs {self.num_envs} seeds, got {len(seeds)}")
        return [check_seed(f"seed[{i}]", s) for i, s in enumerate(seeds)]

    def _validate_group_size(self, group_size: Any) -> int:
        group_size = check_int("group_size", group_size, 1)
        if self.num_envs % group_size:
            raise ConfigError(f"group_size must divide num_envs={self.num_envs}, got {group_size}")
        return group_size

    def get_state(self) -> dict[str, Any]:
        """Everything that defines this env's future (episodes, generators, groups, the reference's cache),
        for checkpoints: ``set_state`` on an env built with the same arguments continues exactly."""
        return {"batch": self.batch.get_state(), "rngs": [rng.bit_generator.state for rng in self._rngs],
                "split": self._split, "group_size": self._group_size,
                "group_queues": copy.deepcopy(self._group_queues), "episode_counts": list(self._episode_counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s result."""
        self._check_open("set_state")
        if len(state["rngs"]) != self.num_envs:
            raise ConfigError(f"this checkpoint holds {len(state['rngs'])} sub-envs, the env has {self.num_envs}")
        self.batch.set_state(state["batch"])
        self._rngs = [seeding.np_random()[0] for _ in state["rngs"]]
        for rng, saved in zip(self._rngs, state["rngs"]):
            rng.bit_generator.state = saved
        self._split, self._group_size = state["split"], state["group_size"]
        self._group_queues = copy.deepcopy(state["group_queues"])
        self._episode_counts = list(state["episode_counts"])

    def _next_prompt(self, env_index: int) -> str:
        """The next prompt of a sub-env: its own draw, or its group's shared draw."""
        if self._group_size == 1:
            return self._draw_spec(self._split, self._rngs[env_index])
        group = env_index // self._group_size
        queue = self._group_queues.setdefault(group, [])
        episode = self._episode_counts[env_index]
        leader_rng = self._rngs[group * self._group_size]
        while len(queue) <= episode:
            queue.append(self._draw_spec(self._split, leader_rng))
        return queue[episode]

    def _prepare_restart(self, finished: list[int]) -> Restart:
        """The next episodes of the sub-envs in ``finished`` (their episode counts advanced, their prompts or
        responders drawn); on failure the generators, queues and counts are put back as they were."""
        saved = ([rng.bit_generator.state for rng in self._rngs], copy.deepcopy(self._group_queues),
                 list(self._episode_counts))
        try:
            for i in finished:
                self._episode_counts[i] += 1
            return self.batch.prepare(finished, [self._next_prompt(i) for i in finished], self._split)
        except BaseException:
            for rng, state in zip(self._rngs, saved[0]):
                rng.bit_generator.state = state
            self._group_queues, self._episode_counts = saved[1], saved[2]
            raise

    # ------------------------------------------------------------------------------------------ step
    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with one token each; finished sub-envs are reset in the same call.

        ``actions``: ``num_envs`` integer token ids (an array of shape ``(num_envs,)`` or a sequence). A
        rejected step (bad actions, a failing reward model) changes nothing."""
        self._check_open("step")
        counts = list(self._episode_counts)
        prepared: list[Restart] = []
        rewards, terminated, final_infos = self.batch.step(
            actions, restart=lambda finished: prepared.append(self._prepare_restart(finished)) or prepared[-1])
        infos: dict[str, Any] = {}
        finished = np.flatnonzero(terminated).tolist()
        if finished:
            final_obs = {i: self.batch.observation(i) for i in finished}
            for i in finished:
                final_infos[i].update(group=i // self._group_size, group_episode=counts[i])
            self.batch.start(finished, *prepared[-1])
            for i in finished:
                infos = self._add_info(infos, {"final_obs": final_obs[i], "final_info": final_infos[i]}, i)
        return (self.batch.observations(), rewards.astype(np.float64), terminated,
                np.zeros(self.num_envs, dtype=bool), self._step_infos(infos))

    def _step_infos(self, infos: dict[str, Any]) -> dict[str, Any]:
        return infos

    def render(self) -> tuple[str, ...] | tuple[np.ndarray, ...] | None:
        """``"ansi"``: prompt + text so far of every sub-env; ``"rgb_array"``: each drawn in an RGB image."""
        self._check_open("render")
        if self.render_mode == "ansi":
            return tuple(self._texts())
        if self.render_mode == "rgb_array":
            return tuple(render_text_image(text) for text in self._texts())
        return None

    def close_extras(self, **kwargs: Any) -> None:
        """Release the reference model; later ``reset``/``step``/``render`` raise EnvClosedError."""
        self._release()
