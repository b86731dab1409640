"""``TextGen-v0``: token-level text generation as a Gymnasium environment."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from transformers import PreTrainedModel

from text_envs.config import RewardSpec, TextGenConfig, build_episode_batch, parse_reset_options, sample_prompt
from text_envs.episode_batch import EpisodeBatch, Restart
from text_envs.errors import ConfigError, EnvClosedError
from text_envs.rendering import render_text_image
from text_envs.tasks import Task
from text_envs.validation import check_seed, describe, token_id


def observation_space(vocab_size: int, window: int) -> spaces.Dict:
    """The ``Dict`` observation space of one TextGen env."""
    return spaces.Dict({
        "input_ids": spaces.Box(low=0, high=vocab_size - 1, shape=(window,), dtype=np.int64),
        "attention_mask": spaces.Box(low=0, high=1, shape=(window,), dtype=np.int64),
    })


class TextGenBase:
    """What the single and the vector TextGen env share: configuration, episode batch, KL coefficient."""

    batch: EpisodeBatch
    metadata: dict[str, Any]
    #: ``reset(options=...)`` keys of the single env.
    reset_option_names: tuple[str, ...] = ("prompt", "split")

    def _build_batch(self, config: Any, batch_size: int) -> tuple[EpisodeBatch, Task | None]:
        """The episode engine of ``config`` (TextChat overrides it with the multi-turn one)."""
        return build_episode_batch(config, batch_size=batch_size)

    def _draw_spec(self, split: str, rng: np.random.Generator) -> Any:
        """What starts one episode, drawn with ``rng``: a prompt of the task's ``split`` (TextChat: a responder
        seed)."""
        return sample_prompt(self.task, split, rng)

    def _setup(self, config: Any, batch_size: int, render_mode: str | None) -> None:
        if render_mode is not None and (not isinstance(render_mode, str)
                                        or render_mode not in self.metadata["render_modes"]):
            raise ConfigError(f"render_mode must be None or one of {self.metadata['render_modes']}, got "
                              f"{describe(render_mode)}")
        self.config = config
        self.render_mode = render_mode
        self.batch, self.task = self._build_batch(config, batch_size)
        self.tokenizer = self.batch.tokenizer
        self._closed = False

    def _check_open(self, call: str) -> None:
        if self._closed:
            raise EnvClosedError(f"{call}() on a closed {type(self).__name__}: its reference model was released; "
                                 "create a new env")

    def _release(self) -> None:
        """Drop the reference model and mark the env closed (idempotent)."""
        self.batch.stepper = self.batch.reference = None
        self._closed = True

    def _texts(self) -> list[str]:
        """Prompt + text so far of every slot."""
        return [self.tokenizer.decode(s.prompt_ids + s.generated, skip_special_tokens=True) for s in self.batch.slots]

    @property
    def kl_coef(self) -> float:
        """The KL coefficient beta (settable, e.g. by an adaptive KL controller through ``set_attr``)."""
        return self.batch.kl_coef

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.batch.kl_coef = value

    def attach_reference(self, model: Any, context: Callable[[], Any]) -> None:
        """Use ``model`` run inside ``context()`` as the frozen reference (an env created with
        ``reference_model="<policy>"``: e.g. a LoRA policy's LM and its ``disable_adapter``)."""
        self._check_open("attach_reference")
        self.batch.attach_reference(model, context)

    @property
    def reference_pending(self) -> bool:
        """Whether the env waits for :meth:`attach_reference` (a shared reference not attached yet)."""
        return self.batch.reference_pending

    @property
    def reward_model(self) -> Any:
        """The reward model scoring finished completions."""
        return self.batch.reward_model


class TextGenEnv(TextGenBase, gym.Env[dict, np.int64]):
    """
    ## Description

    Token-level text generation. An episode starts from a prompt of the task; each action is
    the id of the next token; the episode ends when the agent emits EOS or reaches
    ``max_new_tokens``. The finished completion is scored by a pluggable reward model (the
    task's default, or any other passed as ``reward_model``), and every token pays the
    reference-model half of a KL penalty, so that RL fine-tuning stays close to a frozen
    reference LM (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences").

    ## Action Space

    ``Discrete(vocab_size)``: the id of the next token, where ``vocab_size`` is the output size of
    the model's LM head. An id outside it raises :class:`~text_envs.errors.InvalidActionError`.

    ## Observation Space

    A ``Dict`` of two fixed-length int64 arrays of length ``W = max_prompt_tokens + max_new_tokens``,
    holding prompt + generated tokens, **left-padded** (the newest token is always at index
    ``W - 1``; padding uses the tokenizer's pad id):

    | Key              | Shape  | Dtype | Min | Max            | Meaning                                  |
    |------------------|--------|-------|-----|----------------|------------------------------------------|
    | `input_ids`      | (W,)   | int64 | 0   | vocab_size - 1 | token ids; pad id where the mask is 0    |
    | `attention_mask` | (W,)   | int64 | 0   | 1              | 1 on real tokens (prompt + generated)    |

    ## Rewards

    With ``beta = kl_coef``, ``R(x)`` the reward model's score of the finished completion ``x``,
    and ``T`` the episode's last step, the env pays at step ``t``:

        dense  (default): r_t = beta * log pi_ref(a_t | s_t)  +  [t == T] * R(x)
        sparse:           r_t = [t == T] * (R(x) + beta * sum_t' log pi_ref(a_t' | s_t'))
        deferred:         as sparse; the final info adds ref_logprobs = [log pi_ref(a_t | s_t) for t]

    The agent adds its own half, ``-beta * log pi(a_t | s_t)`` (TokenPPO does so exactly; stock
    SB3 algorithms approximate it with ``ent_coef``). Then

        E_pi[ sum_t r_t - beta * sum_t log pi(a_t|s_t) ] = E_pi[R(x)] - beta * KL(pi || pi_ref)

    exactly: the KL-regularised objective, while the env's reward depends only on the state
    and action (the env stays an MDP). ``kl_coef = 0`` loads no reference model. In the dense
    mode the reference is stepped token by token with its KV cache; in the sparse mode it runs
    once, teacher-forced and batched, over the sequences that finished on a step (half the
    forwards of a rollout; NLPO-style action masks need the dense mode). The deferred mode pays
    what the sparse mode pays and reports each token's term from the same forward, so a learner
    can move it back onto its token (``agents.buffers.SequenceRolloutBuffer`` does: TokenPPO's
    GAE then sees the dense mode's per-token rewards).

    ## Starting State

    A prompt drawn uniformly (with ``self.np_random``) from the task's ``train`` split, or the
    ``eval`` split with ``reset(options={"split": "eval"})``, or forced with
    ``reset(options={"prompt": "..."})``. Prompts longer than ``max_prompt_tokens`` are
    truncated from the left with a :class:`~text_envs.episode_batch.PromptTruncatedWarning`;
    an empty prompt raises :class:`~text_envs.errors.InvalidPromptError`. With a chat model
    (``prompt_format="auto"`` and a tokenizer with a chat template, e.g. SmolLM2-Instruct, or
    ``"chat"``) the observation starts with the chat template applied to the task's instruction
    (``Task.instruction``, e.g. ``"Continue this sentence: {prompt}"``) as the user message and the
    assistant's generation prompt; the agent writes the reply and its end-of-turn token is EOS.

    ## Episode End

    * **Termination**: the agent emits an EOS token, *or* the completion reaches
      ``max_new_tokens``. In both cases the env scores the text and reports ``terminated=True``:
      the budget is part of the task (no reward follows the last token), so value targets must
      not bootstrap past it. ``info["finish_reason"]`` tells which (``"eos"`` / ``"length"``).
    * **Truncation**: never reported by the env itself; a ``TimeLimit`` wrapper is not needed and
      must not be used to end episodes (it would end them unscored).

    Stepping a finished episode raises :class:`~text_envs.errors.EpisodeFinishedError`. An action
    is one integer token id (Python or numpy integer, or a 0-d / 1-element integer array); anything
    else raises :class:`~text_envs.errors.InvalidActionError`. Every call is transactional: one that
    raises (bad action, seed or option; a reward model that raises or returns NaN, the wrong length or
    the wrong type: :class:`~text_envs.errors.RewardModelError` naming it) leaves the env exactly as it
    was, so the same step can be retried. After ``close()``, calls raise
    :class:`~text_envs.errors.EnvClosedError`.
    On the last step ``info`` holds ``prompt``, ``text`` (the completion), ``score`` (``R(x)``),
    ``kl_ref_logprob_sum`` (``sum_t log pi_ref(a_t|s_t)``; NaN when ``kl_coef=0``),
    ``num_tokens``, ``finish_reason`` and ``kl_coef``, all plain Python values.

    ## Arguments

    ```python
    gym.make("TextGen-v0", model="tiny", task="sentiment", reward_model=None, reward_kwargs=None,
             kl_coef=0.05, kl_penalty="dense", max_new_tokens=None, max_prompt_tokens=None,
             reference_model=None, device="auto", dtype="auto", render_mode=None, verbose=False,
             prompt_format="auto")
    ```
    See :class:`~text_envs.config.TextGenConfig` for each; ``render_mode="ansi"`` renders
    ``prompt + text so far`` as a string, ``"rgb_array"`` draws it in an RGB image (what
    ``stable_baselines3.common.env_util.make_vec_env`` asks for, and what video recorders need).
    Every argument is validated (types, ranges, the model's context length, device and dtype) before
    anything is loaded. ``gym.make_vec("TextGen-v0", num_envs=N, ...)`` gives the natively
    batched :class:`~text_envs.vector_env.TextGenVectorEnv`.

    ## Version History

    * v0: initial version (validation, transactional calls, ``rgb_array`` rendering and
      ``EnvClosedError`` added later without changing rewards, observations or episode ends).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, model: str | PreTrainedModel = "tiny", task: str | Task = "sentiment",
                 reward_model: RewardSpec = None, reward_kwargs: Mapping[str, Any] | None = None,
                 kl_coef: float = 0.05, kl_penalty: str = "dense", max_new_tokens: int | None = None,
                 max_prompt_tokens: int | None = None, reference_model: str | PreTrainedModel | None = None,
                 device: str = "auto", dtype: str = "auto", render_mode: str | None = None,
                 verbose: bool = False, prompt_format: str = "auto") -> None:
        config = TextGenConfig(model=model, task=task, reward_model=reward_model, reward_kwargs=reward_kwargs,
                               kl_coef=kl_coef, kl_penalty=kl_penalty, max_new_tokens=max_new_tokens,
                               max_prompt_tokens=max_prompt_tokens, reference_model=reference_model,
                               device=device, dtype=dtype, verbose=verbose, prompt_format=prompt_format)
        self._setup(config, batch_size=1, render_mode=render_mode)
        self.action_space = spaces.Discrete(self.batch.vocab_size)
        self.observation_space = observation_space(self.batch.vocab_size, self.batch.window)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode; ``options``: ``prompt`` (force a prompt), ``split`` (``"train"``/``"eval"``).

        The seed and the options are validated (and a forced prompt encoded) before the env's generator is
        touched: a rejected call leaves the env, its generator included, as it was.
        """
        self._check_open("reset")
        seed = check_seed("seed", seed)
        opts = parse_reset_options(options, self.reset_option_names)
        forced = self.batch.encode([opts["prompt"]]) if "prompt" in opts else None
        generator, generator_seed = self._np_random, self._np_random_seed
        state = None if generator is None else generator.bit_generator.state
        super().reset(seed=seed)
        try:
            restart = (Restart([opts["prompt"]], forced, None) if forced else
                       self.batch.prepare([0], [self._draw_spec(opts["split"], self.np_random)], opts["split"]))
            prompt = restart.prompts[0]
            self.batch.start([0], *restart)
        except BaseException:  # put the generator back as it was (a task prompt that does not encode...)
            self._np_random, self._np_random_seed = generator, generator_seed
            if generator is not None:
                generator.bit_generator.state = state
            raise
        return self.batch.observation(0), self._reset_info(prompt)

    def _reset_info(self, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt}

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        """Append token ``action``; see the class docstring for rewards and episode end."""
        self._check_open("step")
        rewards, done, infos = self.batch.step(np.asarray([token_id(action, self.batch.vocab_size)]))
        return self.batch.observation(0), float(rewards[0]), bool(done[0]), False, self._step_info(infos[0])

    def _step_info(self, final: dict[str, Any] | None) -> dict[str, Any]:
        return final or {}

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the prompt and the text generated so far; ``"rgb_array"``: the same text drawn in an
        RGB image ``(H, W, 3)`` uint8 (for video recorders)."""
        self._check_open("render")
        if self.render_mode == "ansi":
            return self._texts()[0]
        if self.render_mode == "rgb_array":
            return render_text_image(self._texts()[0])
        return None

    def close(self) -> None:
        """Release the reference model; later ``reset``/``step``/``render`` raise EnvClosedError."""
        self._release()
        super().close()
