"""A rollout buffer that keeps whole sequences (prompt + completion) instead of single token steps.

Multi-turn episodes (``TextChat-v0``) are kept whole too: the responder's tokens, read from the observations
(whatever an observation holds beyond the prompt and the tokens so far was appended by the env), are stored
between the actions, and :meth:`SequenceRolloutBuffer.collate` lays each dialogue out as ONE sequence with the
column of every action (:attr:`SequenceBatch.action_positions`): the update evaluates the whole dialogue in one
teacher-forced forward and gathers the agent tokens, so every loss, GAE included, runs over agent tokens only.

**Deferred KL.** An env created with ``kl_penalty="deferred"`` pays the whole reference term
``kl_coef * sum_t log pi_ref(a_t|s_t)`` on the last token (as ``"sparse"`` does) and puts the per-token
``log pi_ref`` in the final info (``ref_logprobs``); the buffer moves the term back onto each token
(:func:`redistribute_deferred_kl`), so its per-token rewards, hence GAE's advantages, are the dense mode's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.rl_math import gae, masked_whiten
from text_envs.errors import ConfigError


@dataclass
class Episode:
    """One finished (or in-progress) episode, token by token."""

    prompt_ids: list[int]
    actions: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # log pi_old(a_t|s_t) of the sampling policy
    values: list[float] = field(default_factory=list)  # V_old(s_t)
    #: env rewards r_t (a deferred KL reference term moved back onto its tokens: :func:`redistribute_deferred_kl`)
    rewards: list[float] = field(default_factory=list)
    kl_coefs: list[float] = field(default_factory=list)  # the env's kl_coef when a_t was taken
    info: dict[str, Any] = field(default_factory=dict)  # final info (score, text, kl_ref_logprob_sum...)
    #: tokens the env appended (a responder's reply), as (number of actions before them, tokens)
    env_tokens: list[tuple[int, list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_env_tokens(self) -> int:
        """Tokens the env appended between the actions."""
        return sum(len(chunk) for _, chunk in self.env_tokens)

    def sequence(self) -> tuple[list[int], list[int]]:
        """Everything after the prompt in observation order, and the index in it of each action."""
        tokens: list[int] = []
        positions: list[int] = []
        chunks = iter(self.env_tokens)
        upcoming = next(chunks, None)
        for step, action in enumerate(self.actions):
            while upcoming is not None and upcoming[0] == step:
                tokens.extend(upcoming[1])
                upcoming = next(chunks, None)
            positions.append(len(tokens))
            tokens.append(action)
        return tokens, positions

    @property
    def kl(self) -> float:
        """Sampled ``sum_t log pi_old(a_t|s_t) - log pi_ref(a_t|s_t)`` (k1 estimate of the sequence KL)."""
        return float(np.sum(self.logprobs)) - float(self.info.get("kl_ref_logprob_sum", np.nan))


def redistribute_deferred_kl(rewards: list[float], kl_coefs: list[float], ref_logprobs: list[float],
                             paid_coef: float) -> list[float]:
    """An episode's per-token rewards with the env's deferred KL reference term moved back onto each token.

    The env paid ``paid_coef * sum_t ref_logprobs[t]`` on the last token (``kl_penalty="deferred"``, paid like
    ``"sparse"``); this returns ``r_t + kl_coefs[t] * ref_logprobs[t]`` with that payment taken off the last
    token: what the dense mode pays, token by token (``kl_coefs[t]``: the coefficient when ``a_t`` was taken).
    Every list has one entry per action: ``(T,), (T,), (T,) -> (T,)``.

    :raises ConfigError: if the lengths differ (the buffer did not see every step of the env that paid them).
    """
    if not len(rewards) == len(kl_coefs) == len(ref_logprobs) or not rewards:
        raise ConfigError(f"a deferred KL term needs one reference log-probability per action: got "
                          f"{len(ref_logprobs)} for an episode of {len(rewards)} actions ({len(kl_coefs)} "
                          "coefficients); the buffer must record every step of the env that paid the rewards")
    moved = [reward + coef * logprob for reward, coef, logprob in zip(rewards, kl_coefs, ref_logprobs)]
    moved[-1] -= paid_coef * float(sum(ref_logprobs))
    return moved


class SequenceBatch(NamedTuple):
    """A padded minibatch of sequences: prompts left-padded, completions right-padded to ``T``."""

    input_ids: torch.Tensor  # (B, L) prompt + completion tokens
    attention_mask: torch.Tensor  # (B, L)
    completion_mask: torch.Tensor  # (B, T) 1 on real completion tokens
    actions: torch.Tensor  # (B, T)
    old_logprobs: torch.Tensor  # (B, T)
    old_values: torch.Tensor  # (B, T)
    advantages: torch.Tensor  # (B, T)
    returns: torch.Tensor  # (B, T)
    index: torch.Tensor  # (B,) positions of these sequences in the buffer
    #: (B, T) column of each action in ``input_ids`` when some sequence holds env tokens (multi-turn), else None:
    #: the completions are then exactly the last ``T`` columns
    action_positions: torch.Tensor | None = None


def pad_right(rows: list[list[float]], width: int, value: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Right-pad lists into a ``(len(rows), width)`` tensor."""
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


class SequenceRolloutBuffer:
    """Collects episodes of a vector env step by step and serves padded minibatches of whole sequences.

    Episodes that are still running when a rollout ends are kept and completed in the next
    rollout (their stored log-probabilities are those of the policy that sampled each token).

    With ``group_size=k > 1`` (critic-free algorithms on a grouped env, see
    ``TextGenVectorEnv``'s grouped resets), a finished episode is held back until the ``k``
    episodes of its group (same ``info["group"]`` and ``info["group_episode"]``, hence the same
    prompt) have all finished; then the whole group enters :attr:`episodes` at once, contiguously.
    So :attr:`episodes` always holds complete groups, ``episodes[g*k:(g+1)*k]`` being group ``g``,
    and incomplete groups wait for a later rollout (:attr:`pending`).

    :param num_envs: number of env slots.
    :param pad_id: padding token id.
    :param device: device of the served tensors.
    :param group_size: episodes per prompt group (1: no grouping).
    """

    def __init__(self, num_envs: int, pad_id: int, device: torch.device, group_size: int = 1) -> None:
        self.num_envs = num_envs
        self.pad_id = pad_id
        self.device = device
        self.group_size = group_size
        self.running: list[Episode | None] = [None] * num_envs
        self.pending: dict[tuple[int, int], list[Episode]] = {}  # incomplete groups, by (group, group_episode)
        self.episodes: list[Episode] = []
        self.advantages: torch.Tensor | None = None  # (N, T_max)
        self.returns: torch.Tensor | None = None  # (N, T_max)

    @property
    def num_tokens(self) -> int:
        """Tokens in finished episodes."""
        return sum(len(episode) for episode in self.episodes)

    def reset(self) -> None:
        """Drop finished episodes (running ones are kept)."""
        self.episodes = []
        self.advantages = self.returns = None

    def add(self, obs: dict[str, np.ndarray], actions: np.ndarray, logprobs: np.ndarray, values: np.ndarray,
            rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]], kl_coef: float) -> list[Episode]:
        """Record one vector step taken from ``obs``; returns the episodes that finished on it."""
        finished = []
        lengths = obs["attention_mask"].sum(-1).tolist()  # (B,) real tokens of each observation
        columns = zip(*(np.asarray(column).tolist() for column in (actions, logprobs, values, rewards, dones)))
        for slot, (action, logprob, value, reward, done) in enumerate(columns):  # Python scalars, not numpy's
            episode = self.running[slot]
            if episode is None:
                real = obs["attention_mask"][slot].astype(bool)
                episode = self.running[slot] = Episode(prompt_ids=obs["input_ids"][slot][real].astype(int).tolist())
            else:
                self._record_env_tokens(episode, obs["input_ids"][slot], int(lengths[slot]))
            episode.actions.append(int(action))
            episode.logprobs.append(float(logprob))
            episode.values.append(float(value))
            episode.rewards.append(float(reward))
            episode.kl_coefs.append(float(kl_coef))
            if done:
                episode.info = {k: v for k, v in infos[slot].items() if k != "terminal_observation"}
                if "ref_logprobs" in episode.info:  # kl_penalty="deferred": per-token rewards as the dense mode's
                    episode.rewards = redistribute_deferred_kl(episode.rewards, episode.kl_coefs,
                                                               list(episode.info["ref_logprobs"]),
                                                               float(episode.info["kl_coef"]))
                self._finish(episode)
                finished.append(episode)
                self.running[slot] = None
        return finished

    @staticmethod
    def _record_env_tokens(episode: Episode, ids: np.ndarray, length: int) -> None:
        """Store the tokens an observation holds beyond the episode's prompt and tokens so far (the env appended
        them after the last action: a multi-turn reply). ``ids`` is the left-padded observation row."""
        known = len(episode.prompt_ids) + len(episode.actions) + episode.num_env_tokens
        if length > known:
            episode.env_tokens.append((len(episode.actions), ids[len(ids) - (length - known):].astype(int).tolist()))

    def _finish(self, episode: Episode) -> None:
        if self.group_size == 1:
            self.episodes.append(episode)
            return
        if "group" not in episode.info or "group_episode" not in episode.info:
            raise RuntimeError("grouped rollouts need final infos with 'group' and 'group_episode' "
                               "(a TextGen vector env reset with options={'group_size': k})")
        key = (int(episode.info["group"]), int(episode.info["group_episode"]))
        members = self.pending.setdefault(key, [])
        members.append(episode)
        if len(members) == self.group_size:
            self.episodes.extend(self.pending.pop(key))

    def groups(self) -> list[list[int]]:
        """Indices into :attr:`episodes` of each complete group (``[[0..k-1], [k..2k-1], ...]``)."""
        k = self.group_size
        return [list(range(start, start + k)) for start in range(0, len(self.episodes), k)]

    def get_state(self) -> dict[str, Any]:
        """The episodes carried over to the next rollout (running ones and incomplete groups)."""
        return {"running": copy.deepcopy(self.running), "pending": copy.deepcopy(self.pending)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s result (call it between rollouts)."""
        self.running, self.pending = copy.deepcopy(state["running"]), copy.deepcopy(state["pending"])

    def discard_running(self) -> None:
        """Forget in-progress episodes and incomplete groups (e.g. after the env was reset)."""
        self.running = [None] * self.num_envs
        self.pending = {}

    def padded(self, field_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A per-token field of every finished episode, right-padded: ``values (N, T), mask (N, T)``."""
        width = max(len(e) for e in self.episodes)
        rows = [getattr(e, field_name) for e in self.episodes]
        mask = pad_right([[1.0] * len(e) for e in self.episodes], width)
        return pad_right(rows, width), mask

    def total_rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Env reward plus the agent's own KL half, ``r_t - kl_coef_t * log pi_old(a_t|s_t)``: ``(N, T), (N, T)``."""
        rewards, mask = self.padded("rewards")
        logprobs, _ = self.padded("logprobs")
        coefs, _ = self.padded("kl_coefs")
        return (rewards - coefs * logprobs) * mask, mask

    def compute_gae(self, gamma: float, lam: float, whiten: bool = True,
                    whiten_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_whiten) -> None:
        """Fill ``advantages`` and ``returns`` ``(N, T)`` from the total rewards and the stored values.

        ``whiten_fn(advantages, mask)`` whitens them (``whiten=True``): by default over this buffer's tokens;
        :func:`agents.distributed.masked_whiten` takes the statistics over every rank's buffer."""
        rewards, mask = self.total_rewards()
        values, _ = self.padded("values")
        advantages, returns = gae(rewards, values, mask, gamma, lam)
        self.set_advantages(whiten_fn(advantages, mask) if whiten else advantages, returns)

    def set_advantages(self, advantages: torch.Tensor, returns: torch.Tensor | None = None) -> None:
        """Set per-token advantages ``(N, T)`` (and value targets) computed by an algorithm."""
        self.advantages = advantages
        self.returns = returns if returns is not None else torch.zeros_like(advantages)

    def minibatches(self, batch_size: int, generator: np.random.Generator) -> Iterator[SequenceBatch]:
        """Shuffled minibatches of ``batch_size`` sequences (the last one may be smaller)."""
        for index in self.minibatch_indices(batch_size, generator):
            yield self.collate(index)

    def minibatch_indices(self, batch_size: int, generator: np.random.Generator) -> list[list[int]]:
        """The episode indices of :meth:`minibatches`: a shuffled order cut into runs of ``batch_size``."""
        if self.advantages is None:
            raise RuntimeError("compute advantages before drawing minibatches")
        order = generator.permutation(len(self.episodes))
        return [order[start:start + batch_size].tolist() for start in range(0, len(order), batch_size)]

    def collate(self, index: list[int]) -> SequenceBatch:
        """Pad the episodes at ``index`` into one :class:`SequenceBatch` on the buffer's device."""
        episodes = [self.episodes[i] for i in index]
        prompt_width = max(len(e.prompt_ids) for e in episodes)
        width = max(len(e) for e in episodes)
        multi_turn = any(e.env_tokens for e in episodes)
        sequences = [e.sequence() if multi_turn else (e.actions, []) for e in episodes]
        span = max(len(tokens) for tokens, _ in sequences)  # = width without env tokens
        ids = torch.full((len(episodes), prompt_width + span), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, (episode, (tokens, _)) in enumerate(zip(episodes, sequences)):
            start = prompt_width - len(episode.prompt_ids)
            ids[row, start:prompt_width] = torch.as_tensor(episode.prompt_ids)
            ids[row, prompt_width:prompt_width + len(tokens)] = torch.as_tensor(tokens)
            attention[row, start:prompt_width + len(tokens)] = 1
        positions = None
        if multi_turn:  # padded entries point at the last column (masked out by completion_mask)
            positions = pad_right([[prompt_width + p for p in columns] for _, columns in sequences], width,
                                  value=prompt_width + span - 1, dtype=torch.long)
        mask = pad_right([[1.0] * len(e) for e in episodes], width)
        tensors = SequenceBatch(
            input_ids=ids, attention_mask=attention, completion_mask=mask,
            actions=pad_right([e.actions for e in episodes], width, dtype=torch.long),
            old_logprobs=pad_right([e.logprobs for e in episodes], width),
            old_values=pad_right([e.values for e in episodes], width),
            advantages=self.advantages[index, :width], returns=self.returns[index, :width],
            index=torch.as_tensor(index), action_positions=positions,
        )
        return SequenceBatch(*(None if t is None else t.to(self.device) for t in tensors))
