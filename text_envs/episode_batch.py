"""The batched episode logic shared by :class:`~text_envs.env.TextGenEnv` and its vector env.

:class:`EpisodeBatch` runs ``B`` text-generation episodes side by side: it encodes prompts,
builds the left-padded observations, validates actions, pays the reference term of the KL penalty
(``dense``: one batched, KV-cached reference forward per step; ``sparse`` / ``deferred``: one batched
teacher-forced reference forward over the sequences that finished on a step) and scores every sequence
that finished on a step with one batched reward-model call. The single env is ``B = 1``; the vector
env is ``B = num_envs``. Keeping one implementation guarantees both pay identical rewards.

**Transactional.** :meth:`EpisodeBatch.step` and :meth:`EpisodeBatch.start` first validate their
input and compute everything that can fail (the reward model's scores, the sparse reference sums,
the prompts' tokens) without touching any state, and only then commit: a call that raises leaves the
batch exactly as it was, so the same call can be retried (e.g. after a reward model's transient
failure) as if the failed one never happened.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, NamedTuple

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from text_envs.dialogue import Dialogue
from text_envs.errors import ConfigError, EpisodeFinishedError, InvalidPromptError, RewardModelError, TextEnvsError
from text_envs.lm_stepper import BatchedLMStepper, continuation_logprobs
from text_envs.responders.base import Turn
from text_envs.rewards import RewardModel, validate_scores
from text_envs.validation import MAX_KL_COEF, check_prompt, check_real, token_ids

#: How the env pays the reference half of the KL penalty (see :class:`EpisodeBatch`'s ``kl_penalty``).
KL_PENALTIES = ("dense", "sparse", "deferred")
#: The modes that run one teacher-forced reference forward per finished batch instead of stepping the reference.
TEACHER_FORCED_PENALTIES = ("sparse", "deferred")


def agent_token_values(values: list[float], flags: list[int]) -> list[float]:
    """The entries of ``values`` (one per token after the prompt) at agent tokens (``flags`` 1): ``(n,) -> (k,)``."""
    return [value for value, flag in zip(values, flags) if flag]


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than ``max_prompt_tokens`` was truncated from the left."""


@dataclass
class SlotState:
    """One episode in the batch.

    ``generated`` holds every token after the prompt: the agent's actions and, in a multi-turn episode, the
    responder's replies (at the indices in ``env_positions``), in observation order.
    """

    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    finished: bool = True
    ref_logprob_sum: float = 0.0
    env_positions: list[int] = field(default_factory=list)  # indices into `generated` of responder tokens
    turn_start: int = 0  # index into `generated` where the agent's current turn began
    turns: list[dict[str, Any]] = field(default_factory=list)  # answered turns: agent text, reply, reward
    score: float = 0.0  # sum of the turn rewards so far (multi-turn)
    responder: Any = None  # the episode's responder (multi-turn)
    responder_info: dict[str, Any] = field(default_factory=dict)  # the last turn's info

    @property
    def num_agent_tokens(self) -> int:
        """Actions taken so far."""
        return len(self.generated) - len(self.env_positions)

    def agent_flags(self) -> list[int]:
        """1 for each agent token of ``generated``, 0 for each responder token."""
        flags = [1] * len(self.generated)
        for index in self.env_positions:
            flags[index] = 0
        return flags


class PendingTurn(NamedTuple):
    """The responder's side of an agent turn that ends on this step, computed before the commit."""

    text: str  # the agent's turn, decoded
    turn: Turn  # the responder's validated answer
    responder: Any  # the advanced copy of the responder (kept on commit)
    chunk: list[int]  # tokens appended to the observation (empty when the episode ends)
    finish_reason: str | None  # why the episode ends on this turn, or None if it goes on


class Restart(NamedTuple):
    """New episodes prepared for some slots (validated; nothing mutated): what :meth:`EpisodeBatch.start`
    consumes."""

    prompts: list[str]  # the task prompts or, multi-turn, the responders' first messages
    encoded: list[list[int]]
    responders: list[Any] | None  # multi-turn: the reset responders


PROMPT_FORMATS = ("raw", "chat")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_prompt_tokens: int, prompt_format: str = "raw",
                  instruction: str = "{prompt}") -> list[int]:
    """Token ids of ``prompt``, left-truncated to the budget.

    ``"raw"``: the text itself with the tokenizer's special prefix (e.g. BOS), the agent continuing it.
    ``"chat"``: ``instruction.format(prompt=prompt)`` as one user message through the tokenizer's chat
    template, with the generation prompt: the agent writes the assistant's reply (ended by the template's
    end-of-turn token, the model's EOS).
    """
    check_prompt(prompt)
    if prompt_format == "chat":
        messages = [{"role": "user", "content": instruction.format(prompt=prompt)}]
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    else:
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        raise InvalidPromptError(f"prompt {prompt!r} encodes to no tokens")
    if len(ids) > max_prompt_tokens:
        warnings.warn(f"prompt of {len(ids)} tokens truncated from the left to max_prompt_tokens="
                      f"{max_prompt_tokens}: {prompt[:60]!r}", PromptTruncatedWarning, stacklevel=3)
        ids = ids[-max_prompt_tokens:]
    return ids


class EpisodeBatch:
    """``batch_size`` parallel episodes of token-level generation.

    :param tokenizer: tokenizer of the policy's model (defines the vocabulary and EOS).
    :param vocab_size: size of the action space (the model's output dimension).
    :param reward_model: batched reward model scoring finished completions.
    :param reference: frozen reference LM for the KL term, or None (``kl_coef`` must then stay 0).
    :param kl_coef: coefficient of the KL penalty.
    :param kl_penalty: ``"dense"`` (pay ``kl_coef * log pi_ref(a_t|s_t)`` every step, stepping the reference
        with its KV cache), ``"sparse"`` (pay the sum at the end, computed by one batched teacher-forced
        reference forward over the sequences that finished on a step: half the forwards of the rollout) or
        ``"deferred"`` (paid exactly like ``"sparse"``, and the final info also carries ``ref_logprobs``, the
        per-agent-token ``log pi_ref(a_t|s_t)`` of that same forward, so that a learner can move the term back
        onto each token: dense credit assignment at the sparse mode's cost).
    :param max_new_tokens: token budget of an episode.
    :param max_prompt_tokens: prompts are left-truncated to this many tokens.
    :param eos_token_ids: token ids that end an episode.
    :param batch_size: number of parallel episodes.
    :param reference_pending: the reference is the policy's base model, attached later with
        :meth:`attach_reference` (a LoRA policy: one copy of the base weights for both).
    :param prompt_format: ``"raw"`` or ``"chat"`` (see :func:`encode_prompt`).
    :param instruction: the user message of the chat format, ``{prompt}`` standing for the task's prompt.
    :param dialogue: multi-turn episodes (``TextChat-v0``): a responder answers each agent turn, its
        tokens are appended to the observation (never actions) and it pays the rewards (``reward_model``
        is then unused). ``max_new_tokens`` is the episode's budget of agent and responder tokens. None:
        one turn, scored by ``reward_model`` (``TextGen-v0``): the one-turn case of the same engine.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, reward_model: RewardModel | None,
                 reference: PreTrainedModel | None, kl_coef: float, kl_penalty: str, max_new_tokens: int,
                 max_prompt_tokens: int, eos_token_ids: frozenset[int], batch_size: int,
                 reference_pending: bool = False, prompt_format: str = "raw", instruction: str = "{prompt}",
                 dialogue: Dialogue | None = None) -> None:
        if kl_penalty not in KL_PENALTIES:
            raise ConfigError(f"kl_penalty must be one of {KL_PENALTIES}, got {kl_penalty!r}")
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.prompt_format, self.instruction = prompt_format, instruction
        self.dialogue = dialogue
        self.reference_pending = reference_pending and reference is None
        self.reference_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.reward_model = reward_model
        self.kl_penalty = kl_penalty
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_token_ids = eos_token_ids
        self.batch_size = batch_size
        self.pad_id = int(tokenizer.pad_token_id)
        self.window = max_prompt_tokens + max_new_tokens
        self.reference = reference
        stepped = reference is not None and kl_penalty == "dense"
        self.stepper = BatchedLMStepper(reference, batch_size, self.pad_id) if stepped else None
        self.ref_logprobs: torch.Tensor | None = None  # (B, V) log pi_ref(. | s_t) of the current state
        self.slots = [SlotState() for _ in range(batch_size)]
        # observations rendered so far: ids, mask, agent mask (B, window) and, per slot, (its state, tokens drawn)
        self._rendered: tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[SlotState | None, int]]] | None = None
        self._kl_coef = 0.0
        self.kl_coef = kl_coef

    @property
    def kl_coef(self) -> float:
        """Coefficient of the KL penalty; adaptive controllers may change it between steps."""
        return self._kl_coef

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        value = check_real("kl_coef", value, 0.0, MAX_KL_COEF)
        if value > 0 and self.reference is None and not self.reference_pending:
            raise ConfigError(f"kl_coef={value} needs a reference model, but this env was created with kl_coef=0 "
                              "(which loads none): create it with kl_coef > 0")
        self._kl_coef = value

    def attach_reference(self, model: Any, context: Callable[[], ContextManager[Any]]) -> None:
        """Use ``model`` (run inside ``context()``, e.g. a LoRA policy's ``disable_adapter``) as the reference.

        Only for a batch created with ``reference_pending``; call it before the first episode.
        :raises ConfigError: if this batch has its own reference, or the model's vocabulary is too small.
        """
        if not self.reference_pending:
            raise ConfigError("this env has its own reference model; a shared one can only be attached to an env "
                              "created with reference_model='<policy>'")
        rows = int(model.get_output_embeddings().weight.shape[0])
        if rows < self.vocab_size:
            raise ConfigError(f"the attached reference has a vocabulary of {rows} tokens, fewer than the env's "
                              f"{self.vocab_size}")
        self.reference, self.reference_context, self.reference_pending = model, context, False
        if self.kl_penalty == "dense":
            self.stepper = BatchedLMStepper(model, self.batch_size, self.pad_id, context=context)

    def _check_reference(self) -> None:
        if self.reference_pending and self.kl_coef > 0:
            raise ConfigError("this env shares its reference model with the policy (reference_model='<policy>'), "
                              "which is not attached yet: build the algorithm with a LoRA policy first (or call "
                              "attach_reference)")

    # ------------------------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, Any]:
        """The running episodes, the KL coefficient and the reference's KV cache, for checkpoints."""
        return {"slots": copy.deepcopy(self.slots), "kl_coef": self.kl_coef,
                "ref_logprobs": None if self.ref_logprobs is None else self.ref_logprobs.clone(),
                "stepper": None if self.stepper is None else self.stepper.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s result (the batch must have been built with the same configuration)."""
        if (state["stepper"] is None) != (self.stepper is None) or len(state["slots"]) != self.batch_size:
            raise ConfigError("this checkpoint was saved by an env with another configuration (batch size, KL "
                              "penalty or reference model)")
        self.slots = copy.deepcopy(state["slots"])
        self.kl_coef = state["kl_coef"]
        if self.stepper is not None:
            self.stepper.set_state(state["stepper"])
        device = self.stepper.device if self.stepper is not None else "cpu"
        self.ref_logprobs = None if state["ref_logprobs"] is None else state["ref_logprobs"].to(device).clone()

    # ----------------------------------------------------------------------------------------- reset
    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of ``prompts`` (validated; nothing is mutated): what :meth:`start` consumes."""
        return [encode_prompt(self.tokenizer, prompt, self.max_prompt_tokens, self.prompt_format, self.instruction)
                for prompt in prompts]

    def prepare(self, slots: list[int], specs: list[Any], split: str = "train") -> Restart:
        """New episodes for ``slots`` without touching the batch: ``specs`` are task prompts (one turn) or,
        multi-turn, responder seeds (each slot gets a fresh responder reset with its seed and
        ``options={"split": split}``). Raises (an invalid prompt, a failing responder) with nothing changed."""
        if self.dialogue is None:
            return Restart(list(specs), self.encode(list(specs)), None)
        responders, prompts, encoded = [], [], []
        for seed in specs:
            responder = self.dialogue.new_responder()
            message = self.dialogue.open(responder, int(seed), split)
            responders.append(responder)
            prompts.append(message)
            encoded.append(self._encode_opening(message))
        return Restart(prompts, encoded, responders)

    def _encode_opening(self, message: str) -> list[int]:
        ids = self.dialogue.chat_format.opening(message)
        if len(ids) > self.max_prompt_tokens:
            warnings.warn(f"first message of {len(ids)} tokens truncated from the left to max_prompt_tokens="
                          f"{self.max_prompt_tokens}: {message[:60]!r}", PromptTruncatedWarning, stacklevel=4)
            ids = ids[-self.max_prompt_tokens:]
        return ids

    def start(self, slots: list[int], prompts: list[str], encoded: list[list[int]] | None = None,
              responders: list[Any] | None = None) -> None:
        """Begin new episodes in ``slots`` from ``prompts`` (one batched reference prefill).

        ``encoded`` (from :meth:`encode` or :meth:`prepare`) skips re-encoding prompts the caller already
        validated; ``responders`` (multi-turn, from :meth:`prepare`) are the episodes' reset responders. Every
        prompt is encoded before anything changes: an invalid one raises with the batch untouched.
        """
        self._check_reference()
        if self.dialogue is not None and (responders is None or encoded is None):
            raise ConfigError("a multi-turn batch starts episodes from prepare()'s result (responders and tokens)")
        encoded = self.encode(prompts) if encoded is None else encoded
        if self.stepper is not None:
            logits = self.stepper.prefill(slots, encoded).logits
            if self.ref_logprobs is None:
                self.ref_logprobs = torch.zeros((self.batch_size, logits.shape[-1]), device=logits.device)
            self.ref_logprobs[torch.as_tensor(slots, device=logits.device)] = torch.log_softmax(logits, -1)
        for index, (slot, prompt, ids) in enumerate(zip(slots, prompts, encoded)):
            responder = None if responders is None else responders[index]
            self.slots[slot] = SlotState(prompt=prompt, prompt_ids=ids, finished=False, responder=responder)

    # ----------------------------------------------------------------------------------- observation
    def observation(self, slot: int) -> dict[str, np.ndarray]:
        """Left-padded ``input_ids`` and ``attention_mask`` (int64, length ``window``) of one slot."""
        state = self.slots[slot]
        tokens = state.prompt_ids + state.generated
        ids = np.full(self.window, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.window, dtype=np.int64)
        ids[self.window - len(tokens):] = tokens
        mask[self.window - len(tokens):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def agent_mask(self, slot: int) -> np.ndarray:
        """int8 ``(window,)``, aligned with :meth:`observation`: 1 where the observation holds an agent token
        (an action), 0 on the prompt, the responder's tokens and padding."""
        mask = np.zeros(self.window, dtype=np.int8)
        self._write_agent_mask(self.slots[slot], mask)
        return mask

    def agent_masks(self) -> np.ndarray:
        """:meth:`agent_mask` of every slot, stacked: int8 ``(B, window)`` (a fresh array)."""
        return self._render()[2].copy()

    def _write_agent_mask(self, state: SlotState, row: np.ndarray) -> None:
        if state.generated:
            start = self.window - len(state.generated)
            row[start:] = 1
            if state.env_positions:
                row[start + np.asarray(state.env_positions)] = 0

    def observations(self) -> dict[str, np.ndarray]:
        """Observations of all slots stacked: ``(B, window)`` arrays (what :meth:`observation` gives per slot;
        fresh arrays)."""
        ids, mask, _ = self._render()
        return {"input_ids": ids.copy(), "attention_mask": mask.copy()}

    def _render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's observation ``ids``, ``mask`` (int64) and agent mask (int8), all ``(B, window)``, kept up to
        date incrementally: a slot whose episode only grew since the last call has its row shifted left by the
        new tokens, which are written at the end (O(new tokens) Python work per step, not O(episode)); a slot
        with a new episode (a new :class:`SlotState`) is rewritten whole. Internal buffers: callers copy."""
        if self._rendered is None:
            self._rendered = (np.full((self.batch_size, self.window), self.pad_id, dtype=np.int64),
                              np.zeros((self.batch_size, self.window), dtype=np.int64),
                              np.zeros((self.batch_size, self.window), dtype=np.int8),
                              [(None, 0)] * self.batch_size)
        ids, mask, agent, owners = self._rendered
        one_more: list[int] = []  # slots whose only new token is an agent token: shifted together below
        for slot, state in enumerate(self.slots):
            owner, done = owners[slot]
            length = len(state.generated)
            if owner is state and done <= length:
                new = length - done
                if new == 1 and not (state.env_positions and state.env_positions[-1] >= done):
                    one_more.append(slot)
                elif new:
                    ids[slot, :-new] = ids[slot, new:]
                    mask[slot, :-new] = mask[slot, new:]
                    agent[slot, :-new] = agent[slot, new:]
                    ids[slot, -new:] = state.generated[done:]
                    mask[slot, -new:] = 1
                    agent[slot, -new:] = 1
                    for position in reversed(state.env_positions):  # the responder's tokens among the new ones
                        if position < done:
                            break
                        agent[slot, position - length] = 0
            else:  # a new episode (or a restored state): the row from scratch
                full = self.observation(slot)
                ids[slot], mask[slot], agent[slot] = full["input_ids"], full["attention_mask"], self.agent_mask(slot)
            owners[slot] = (state, length)
        if one_more:  # the steady state: one vectorised shift instead of a row at a time
            rows: slice | np.ndarray = slice(None) if len(one_more) == self.batch_size else np.asarray(one_more)
            for array in (ids, mask, agent):
                array[rows, :-1] = array[rows, 1:]
            ids[rows, -1] = [self.slots[slot].generated[-1] for slot in one_more]
            mask[rows, -1] = 1
            agent[rows, -1] = 1
        return ids, mask, agent

    def completion_text(self, slot: int) -> str:
        """Decoded completion of a slot, without the final EOS or other special tokens."""
        return self.decode(self.slots[slot].generated)

    def decode(self, generated: list[int]) -> str:
        """A completion's text, without EOS or other special tokens."""
        return self.tokenizer.decode([t for t in generated if t not in self.eos_token_ids], skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------ step
    def _validate(self, actions: Any) -> np.ndarray:
        actions = token_ids(actions, self.batch_size, self.vocab_size)
        finished = [slot for slot, state in enumerate(self.slots) if state.finished]
        if finished:
            raise EpisodeFinishedError(f"step() called on a finished episode (slot {finished[0]}): call reset() first")
        return actions

    def step(self, actions: Any, restart: Callable[[list[int]], Restart] | None = None
             ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None]]:
        """Apply one token per slot; returns ``rewards (B,)``, ``terminated (B,)`` and, per slot, the final
        info dict of an episode that ended on this step (else None).

        Everything that can fail runs before the first mutation: actions are validated, the episodes ending on
        this step are scored (and, in the sparse and deferred modes, their reference log-probabilities computed)
        from their prospective tokens, the responders answer the turns ending on this step (on copies), and
        ``restart(finished)`` runs (autoreset: it prepares the next episodes of the slots that finish, with
        :meth:`prepare`; the caller starts them after this call). If the reward model or a responder raises or
        returns a bad result, a :class:`~text_envs.errors.RewardModelError` or
        :class:`~text_envs.errors.ResponderError` naming it is raised and nothing has changed.
        """
        self._check_reference()
        actions = self._validate(actions)
        ref_logp = np.zeros(self.batch_size)
        if self.stepper is not None:
            index = torch.as_tensor(actions, device=self.ref_logprobs.device)
            ref_logp = self.ref_logprobs.gather(1, index[:, None]).squeeze(1).double().cpu().numpy()
        if self.dialogue is None:
            done = np.array([int(a) in self.eos_token_ids or len(s.generated) + 1 >= self.max_new_tokens
                             for a, s in zip(actions, self.slots)], dtype=bool)
            pending: dict[int, PendingTurn] = {}
        else:
            pending = self._answer_turns(actions)
            done = np.array([slot in pending and pending[slot].finish_reason is not None
                             for slot in range(self.batch_size)], dtype=bool)
        finished = np.flatnonzero(done).tolist()
        completions = {slot: self.slots[slot].generated + [int(actions[slot])] for slot in finished}
        ref_sums = {slot: self.slots[slot].ref_logprob_sum + float(ref_logp[slot]) for slot in finished}
        per_token: dict[int, list[float]] = {}  # teacher-forced modes: log pi_ref of each agent token
        if finished and self.kl_penalty in TEACHER_FORCED_PENALTIES and self.reference is not None:
            per_token = self._reference_logprobs(finished, completions)
            ref_sums = {slot: float(sum(values)) for slot, values in per_token.items()}
        if self.dialogue is None:
            scores = self._score(finished, completions) if finished else np.zeros(0)
        else:
            scores = np.array([self.slots[s].score + pending[s].turn.reward for s in finished])
        if restart is not None and finished:
            restart(finished)  # may raise (a responder's reset...): still nothing changed
        # ---- commit: nothing below raises for valid input
        rewards = self.kl_coef * ref_logp if self.kl_penalty == "dense" else np.zeros(self.batch_size)
        for state, action, logp in zip(self.slots, actions.tolist(), ref_logp.tolist()):
            state.generated.append(action)
            state.ref_logprob_sum += logp
        for slot, answer in pending.items():
            rewards[slot] += answer.turn.reward
            self._commit_turn(self.slots[slot], answer)
        infos: list[dict[str, Any] | None] = [None] * self.batch_size
        for slot, score in zip(finished, scores):
            state = self.slots[slot]
            state.ref_logprob_sum = ref_sums[slot]
            if self.kl_penalty in TEACHER_FORCED_PENALTIES:
                rewards[slot] = self.kl_coef * state.ref_logprob_sum + (rewards[slot] if self.dialogue else 0.0)
            if self.dialogue is None:
                rewards[slot] += score
            state.finished = True
            infos[slot] = self.final_info(slot, float(score), pending[slot].finish_reason if pending else None)
            if self.kl_penalty == "deferred" and slot in per_token:
                infos[slot]["ref_logprobs"] = per_token[slot]
        if self.stepper is not None and not done.all():
            if any(answer.chunk and not done[slot] for slot, answer in pending.items()):
                chunks = [[] if done[slot] else [int(actions[slot])] + (pending[slot].chunk if slot in pending else [])
                          for slot in range(self.batch_size)]  # a responder's reply: one prefill of the new chunk
                logits = self.stepper.extend(chunks).logits
            else:
                active = torch.as_tensor(~done) if done.any() else None
                logits = self.stepper.step(torch.as_tensor(actions), active).logits
            self.ref_logprobs = torch.log_softmax(logits, -1)
        return rewards, done, infos

    def _reference_logprobs(self, slots: list[int], completions: dict[int, list[int]]) -> dict[int, list[float]]:
        """``log pi_ref(a_t|s_t)`` of every agent token of the episodes ending in ``slots`` (their prospective
        ``completions``: the tokens after the prompt, this step's action included), from ONE teacher-forced
        reference forward; a multi-turn episode's responder tokens are context only. Nothing is mutated."""
        values = continuation_logprobs(self.reference, [self.slots[s].prompt_ids for s in slots],
                                       [completions[s] for s in slots], self.pad_id, self.reference_context)
        if self.dialogue is None:
            return dict(zip(slots, values))
        return {slot: agent_token_values(row, self.slots[slot].agent_flags() + [1])
                for slot, row in zip(slots, values)}

    def _answer_turns(self, actions: np.ndarray) -> dict[int, PendingTurn]:
        """Multi-turn: the responder's answer to every agent turn that ends with ``actions`` (no mutation)."""
        dialogue = self.dialogue
        pending: dict[int, PendingTurn] = {}
        for slot, action in enumerate(actions):
            state = self.slots[slot]
            action = int(action)
            turn_tokens = len(state.generated) - state.turn_start + 1
            closed = action in self.eos_token_ids
            out_of_budget = len(state.generated) + 1 >= self.max_new_tokens
            if not (closed or out_of_budget or turn_tokens >= dialogue.max_turn_tokens):
                continue
            text = self.decode(state.generated[state.turn_start:] + [action])
            turn, responder = dialogue.respond(state.responder, text)
            reason = "done" if turn.done else ("max_turns" if len(state.turns) + 1 >= dialogue.max_turns else None)
            chunk: list[int] = []
            if reason is None:
                chunk = dialogue.chat_format.reply(turn.reply or "", close_turn=not closed)
                # room for the reply and at least one more agent token
                if len(state.generated) + 1 + len(chunk) + 1 > self.max_new_tokens:
                    reason, chunk = "length", []
            if out_of_budget and reason is None:
                reason, chunk = "length", []
            pending[slot] = PendingTurn(text, turn, responder, chunk, reason)
        return pending

    @staticmethod
    def _commit_turn(state: SlotState, answer: PendingTurn) -> None:
        """Record an answered turn (the action is already appended) and append the reply's tokens."""
        state.responder = answer.responder
        state.score += answer.turn.reward
        state.responder_info = answer.turn.info
        state.turns.append({"agent": answer.text, "reply": answer.turn.reply, "reward": answer.turn.reward})
        if answer.chunk:
            first = len(state.generated)
            state.generated.extend(answer.chunk)
            state.env_positions.extend(range(first, len(state.generated)))
        state.turn_start = len(state.generated)

    def _score(self, slots: list[int], completions: dict[int, list[int]]) -> np.ndarray:
        """Scores of the episodes ending in ``slots`` (one batched reward call), validated."""
        prompts = [self.slots[slot].prompt for slot in slots]
        texts = [self.decode(completions[slot]) for slot in slots]
        name = getattr(self.reward_model, "name", type(self.reward_model).__name__)
        try:
            raw = self.reward_model(prompts, texts)
        except TextEnvsError:
            raise
        except Exception as error:  # any failure of user code: the step is not applied
            raise RewardModelError(f"reward model {name!r} raised {type(error).__name__}: {error}; the step was not "
                                   "applied (retry it, or reset)") from error
        return validate_scores(raw, len(slots), name)

    def final_info(self, slot: int, score: float, finish_reason: str | None = None) -> dict[str, Any]:
        """The info dict of a finished episode (plain Python values).

        Multi-turn episodes add ``num_turns``, ``turns`` (per answered turn: the agent's text, the reply and
        its reward), ``num_env_tokens``, ``responder_info`` (the last turn's info) and ``agent_flags`` (0/1 per
        token after the prompt); ``num_tokens`` counts the agent's tokens (actions) only, ``text`` is the
        whole conversation after the first message and ``score`` the sum of the turn rewards. With
        ``kl_penalty="deferred"`` :meth:`step` adds ``ref_logprobs`` (one float per agent token)."""
        state = self.slots[slot]
        last = state.generated[-1]
        info = {
            "prompt": state.prompt,
            "text": self.completion_text(slot),
            "score": score,
            "kl_ref_logprob_sum": state.ref_logprob_sum if self.reference is not None else float("nan"),
            "num_tokens": state.num_agent_tokens,
            "finish_reason": finish_reason or ("eos" if last in self.eos_token_ids else "length"),
            "kl_coef": self.kl_coef,
        }
        if self.dialogue is not None:
            info.update(num_turns=len(state.turns), turns=copy.deepcopy(state.turns),
                        num_env_tokens=len(state.env_positions), responder_info=dict(state.responder_info),
                        agent_flags=state.agent_flags())
        return info
