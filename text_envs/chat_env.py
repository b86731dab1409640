"""``TextChat-v0``: multi-turn token-level conversations with a responder (a game, a tool, a user)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from transformers import PreTrainedModel

from text_envs.config import TextChatConfig, build_chat_batch
from text_envs.env import TextGenEnv, observation_space
from text_envs.episode_batch import EpisodeBatch
from text_envs.errors import ConfigError
from text_envs.responders.base import ResponderSpec
from text_envs.tasks import Task
from text_envs.validation import MAX_NUM_ENVS, check_int, check_seed
from text_envs.vector_env import TextGenVectorEnv

#: Upper bound of a responder seed drawn by the env (``Generator.integers(SEED_BOUND)``).
SEED_BOUND = 2**31 - 1


class TextChatMixin:
    """What the single and the vector TextChat env share: the multi-turn engine and episode starts."""

    batch: EpisodeBatch

    def _build_batch(self, config: Any, batch_size: int) -> tuple[EpisodeBatch, Task | None]:
        return build_chat_batch(config, batch_size), None

    def _draw_spec(self, split: str, rng: np.random.Generator) -> Any:
        return int(rng.integers(SEED_BOUND))

    @property
    def max_new_tokens(self) -> int:
        """Most agent tokens an episode can hold (its token budget; what Dr. GRPO's constant normaliser uses)."""
        return self.batch.max_new_tokens


class TextChatEnv(TextChatMixin, TextGenEnv):
    """
    ## Description

    Multi-turn token-level conversations. A **responder** (a game, a tool, a scripted user: any object with
    ``reset(seed=, options=) -> first message`` and ``respond(agent_text) -> (reply, reward, done, info)``,
    see :mod:`text_envs.responders`) opens the episode with a task statement; each action is the id of the
    agent's next token; when the agent ends its turn (its end-of-turn token, or ``max_turn_tokens``), the env
    calls ``respond`` with the turn's text and appends the reply's tokens (with the chat template's role
    markers) to the observation. Those tokens are **never actions**: the next action is the first token of
    the agent's next turn, and nothing is re-tokenised, so the tokens trained on are the tokens sampled. The
    reference model consumes the responder's tokens by extending its KV cache (one prefill of the new chunk).

    ## Action Space

    ``Discrete(vocab_size)``, as in ``TextGen-v0``.

    ## Observation Space

    As ``TextGen-v0`` (left-padded ``input_ids`` / ``attention_mask`` of length
    ``W = max_prompt_tokens + max_episode_tokens``), holding the first message, the agent's turns and the
    replies. ``info["agent_mask"]`` (int8, ``(W,)``, on every step and at reset) is 1 exactly where the
    observation holds an agent token.

    ## Rewards

    With ``beta = kl_coef`` and ``R_k`` the responder's reward for turn ``k``, the env pays at step ``t``:

        dense  (default): r_t = beta * log pi_ref(a_t | s_t)  +  [t ends turn k] * R_k
        sparse:           r_t = [t ends turn k] * R_k  +  [t == T] * beta * sum_t' log pi_ref(a_t' | s_t')
        deferred:         as sparse; the final info adds ref_logprobs = [log pi_ref(a_t | s_t) for agent t]

    over agent tokens only (the responder's tokens are context, never steps). With the agent's own
    ``-beta * log pi(a_t|s_t)`` this is ``E[sum_k R_k] - beta * KL(pi || pi_ref)`` over the agent's tokens,
    exactly.

    ## Starting State

    A fresh responder reset with a seed drawn from ``self.np_random`` and ``options={"split": "train"}``
    (``reset(options={"split": "eval"})`` for held-out episodes). The first message goes through the
    tokenizer's chat template when it has one (SmolLM2-Instruct), else the plain template
    ``"User: {message}\\nAssistant:"``; each reply is ``"\\nUser: {reply}\\nAssistant:"`` in the plain template.
    A first message longer than ``max_prompt_tokens`` is truncated from the left with a warning.

    ## Episode End

    * **Termination**: the responder says ``done``; or the ``max_turns``-th turn is answered; or the
      episode's tokens (agent's and responder's) reach ``max_episode_tokens`` (or a reply does not fit).
      ``info["finish_reason"]`` is ``"done"``, ``"max_turns"`` or ``"length"``.
    * **Truncation**: never reported by the env.

    Every call is transactional: the responder answers on a deep copy kept only if the step commits, so a
    responder that raises or returns a malformed turn raises :class:`~text_envs.errors.ResponderError` and
    leaves the env as it was. On the last step ``info`` holds ``prompt`` (the first message), ``text`` (the
    conversation after it), ``score`` (``sum_k R_k``), ``kl_ref_logprob_sum`` (over agent tokens),
    ``num_tokens`` (agent tokens), ``num_env_tokens``, ``num_turns``, ``turns`` (agent text, reply and reward
    of each), ``responder_info``, ``agent_flags`` (0/1 per token after the first message), ``finish_reason``,
    ``kl_coef``.

    ## Arguments

    ```python
    gym.make("TextChat-v0", model="tiny", task="guess-number", responder=None, kl_coef=0.05,
             kl_penalty="dense", max_turns=4, max_turn_tokens=32, max_episode_tokens=192,
             max_prompt_tokens=None, reference_model=None, device="auto", dtype="auto",
             render_mode=None, verbose=False, prompt_format="auto")
    ```
    See :class:`~text_envs.config.TextChatConfig`. ``task`` names a registered responder (``guess-number``,
    ``calculator``) or ``"textarena:<GameId>"``; ``responder`` overrides it with a name or a zero-argument
    factory. ``gym.make_vec("TextChat-v0", num_envs=N, ...)`` gives the natively batched
    :class:`TextChatVectorEnv`.

    ## Version History

    * v0: initial version.
    """

    reset_option_names = ("split",)

    def __init__(self, model: str | PreTrainedModel = "tiny", task: str = "guess-number",
                 responder: ResponderSpec | None = None, kl_coef: float = 0.05, kl_penalty: str = "dense",
                 max_turns: int = 4, max_turn_tokens: int = 32, max_episode_tokens: int = 192,
                 max_prompt_tokens: int | None = None, reference_model: str | PreTrainedModel | None = None,
                 device: str = "auto", dtype: str = "auto", render_mode: str | None = None, verbose: bool = False,
                 prompt_format: str = "auto") -> None:
        config = TextChatConfig(model=model, task=task, responder=responder, kl_coef=kl_coef, kl_penalty=kl_penalty,
                                max_turns=max_turns, max_turn_tokens=max_turn_tokens,
                                max_episode_tokens=max_episode_tokens, max_prompt_tokens=max_prompt_tokens,
                                reference_model=reference_model, device=device, dtype=dtype, verbose=verbose,
                                prompt_format=prompt_format)
        self._setup(config, batch_size=1, render_mode=render_mode)
        self.action_space = spaces.Discrete(self.batch.vocab_size)
        self.observation_space = observation_space(self.batch.vocab_size, self.batch.window)

    def _reset_info(self, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt, "agent_mask": self.batch.agent_mask(0)}

    def _step_info(self, final: dict[str, Any] | None) -> dict[str, Any]:
        info = dict(final or {})
        info["agent_mask"] = self.batch.agent_mask(0)
        return info


class TextChatVectorEnv(TextChatMixin, TextGenVectorEnv):
    """``num_envs`` TextChat conversations stepped together, with one batched reference model.

    Same observations, rewards and episode ends as ``num_envs`` :class:`TextChatEnv` seeded ``seed, seed + 1,
    ...``; one batched, KV-cached reference forward per step (the replies of every turn that ended on the step
    enter it as one chunk prefill), one responder per sub-env. Same-step autoreset, as ``TextGen-v0``'s vector
    env; ``info["agent_mask"]`` is ``(num_envs, W)``. Reset options: ``split``, ``group_size`` (``k``
    consecutive sub-envs play the same game: their responders get the same seed, for GRPO/RLOO) and
    ``episode_seeds`` (one responder seed per sub-env, e.g. for held-out evaluation).

    Arguments are those of :class:`TextChatEnv` plus ``num_envs``.
    """

    vector_reset_option_names = ("split", "group_size", "episode_seeds")

    def __init__(self, num_envs: int = 1, model: str | PreTrainedModel = "tiny", task: str = "guess-number",
                 responder: ResponderSpec | None = None, kl_coef: float = 0.05, kl_penalty: str = "dense",
                 max_turns: int = 4, max_turn_tokens: int = 32, max_episode_tokens: int = 192,
                 max_prompt_tokens: int | None = None, reference_model: str | PreTrainedModel | None = None,
                 device: str = "auto", dtype: str = "auto", render_mode: str | None = None, verbose: bool = False,
                 prompt_format: str = "auto") -> None:
        num_envs = check_int("num_envs", num_envs, 1, MAX_NUM_ENVS)
        config = TextChatConfig(model=model, task=task, responder=responder, kl_coef=kl_coef, kl_penalty=kl_penalty,
                                max_turns=max_turns, max_turn_tokens=max_turn_tokens,
                                max_episode_tokens=max_episode_tokens, max_prompt_tokens=max_prompt_tokens,
                                reference_model=reference_model, device=device, dtype=dtype, verbose=verbose,
                                prompt_format=prompt_format)
        self._init_vector(config, num_envs, render_mode)

    def _forced_specs(self, opts: dict[str, Any]) -> list[Any] | None:
        if "episode_seeds" not in opts:
            return None
        seeds = opts["episode_seeds"]
        if not isinstance(seeds, (list, tuple, np.ndarray)) or len(seeds) != self.num_envs:
            raise ConfigError(f"reset option episode_seeds needs a list of {self.num_envs} seeds, got "
                              f"{seeds!r}"[:200])
        return [check_seed(f"episode_seeds[{i}]", s) for i, s in enumerate(seeds)]

    def _reset_infos(self, prompts: list[str]) -> dict[str, Any]:
        infos = super()._reset_infos(prompts)
        infos.update(agent_mask=self._agent_masks(), _agent_mask=np.ones(self.num_envs, dtype=bool))
        return infos

    def _step_infos(self, infos: dict[str, Any]) -> dict[str, Any]:
        infos["agent_mask"] = self._agent_masks()
        infos["_agent_mask"] = np.ones(self.num_envs, dtype=bool)
        return infos

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        """Gymnasium's batching of infos, except that a finished episode's ``responder_info`` (whatever the
        responder returned) is kept whole in an object array: batched key by key, its values' types would be
        guessed from the first sub-env that reports them."""
        final = env_info.get("final_info")
        if not isinstance(final, dict) or "responder_info" not in final:
            return super()._add_info(vector_infos, env_info, env_num)
        final = dict(final)
        responder_info = final.pop("responder_info")
        vector_infos = super()._add_info(vector_infos, {**env_info, "final_info": final}, env_num)
        batched = vector_infos["final_info"]
        batched.setdefault("responder_info", np.full(self.num_envs, None, dtype=object))[env_num] = responder_info
        batched.setdefault("_responder_info", np.zeros(self.num_envs, dtype=bool))[env_num] = True
        return vector_infos

    def _agent_masks(self) -> np.ndarray:
        return self.batch.agent_masks()
