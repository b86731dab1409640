"""Multi-turn pieces of the episode engine: how messages become tokens, and the responder's side of a turn.

:class:`ChatFormat` turns the responder's messages into the token chunks that ``TextChat-v0`` appends to the
observation (they are never actions, and never re-tokenised: the agent's own tokens stay exactly as sampled):

* with a tokenizer that has a chat template (SmolLM2-Instruct...), the first message is the template applied
  to one user message with the generation prompt, and each reply is the template's rendering of a user
  message and the next generation prompt, cut just after the agent's end-of-turn token;
* without one (the bundled tiny LM), the documented plain template::

      <bos>User: {first message}\\nAssistant:{agent turn}</s>\\nUser: {reply}\\nAssistant:{agent turn}</s>...

An agent turn ends with the model's end-of-turn token (its EOS, e.g. ``<|im_end|>``) or at
``max_turn_tokens``; in the second case the env writes the end-of-turn token itself, as the first token of
the reply chunk, so every agent turn in the observation is closed the same way.

:class:`Dialogue` holds the responder factory and the turn limits, and plays the responder's side of a turn
transactionally: :meth:`Dialogue.respond` answers on a deep copy of the responder, which the caller keeps
only when it commits the step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from text_envs.errors import ConfigError, ResponderError, TextEnvsError
from text_envs.responders.base import (
    Responder,
    ResponderFactory,
    Turn,
    build_responder,
    check_first_message,
    check_turn,
    responder_name,
)

#: The plain template of tokenizers without a chat template: opening and reply chunks.
PLAIN_OPENING = "User: {message}\nAssistant:"
PLAIN_REPLY = "\nUser: {message}\nAssistant:"

_SENTINEL = "\u2063REPLY\u2063"  # an invisible separator around a placeholder: never part of a real template


class ChatFormat:
    """How a conversation's messages become tokens (see the module docstring).

    :param tokenizer: the policy's tokenizer.
    :param use_template: use the tokenizer's chat template (``True``) or the plain template.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, use_template: bool) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigError("a multi-turn env needs a tokenizer with an EOS (end-of-turn) token")
        self.tokenizer = tokenizer
        self.use_template = use_template
        self.end_of_turn_id = int(tokenizer.eos_token_id)
        self._reply_prefix, self._reply_suffix = self._reply_template() if use_template else PLAIN_REPLY.split(
            "{message}")

    def _reply_template(self) -> tuple[str, str]:
        """The text the template writes after the agent's end-of-turn token around a user reply."""
        agent = "\u2063AGENT\u2063"
        end = self.tokenizer.decode([self.end_of_turn_id])
        history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": agent}]
        before = self.tokenizer.apply_chat_template(history, tokenize=False)
        after = self.tokenizer.apply_chat_template(history + [{"role": "user", "content": _SENTINEL}],
                                                   tokenize=False, add_generation_prompt=True)
        cut = before.find(agent + end)
        if cut < 0 or not after.startswith(before[:cut + len(agent) + len(end)]) or after.count(_SENTINEL) != 1:
            raise ConfigError("this tokenizer's chat template does not end assistant turns with its EOS token "
                              f"{end!r}: use prompt_format='raw' (the plain template)")
        reply = after[cut + len(agent) + len(end):]
        prefix, suffix = reply.split(_SENTINEL)
        return prefix, suffix

    def opening(self, message: str) -> list[int]:
        """Token ids of the first message and the generation prompt (with the tokenizer's special prefix)."""
        if self.use_template:
            messages = [{"role": "user", "content": message}]
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                           tokenize=True)["input_ids"])
        return list(self.tokenizer(PLAIN_OPENING.format(message=message), add_special_tokens=True)["input_ids"])

    def reply(self, message: str, close_turn: bool) -> list[int]:
        """Token ids appended after an agent turn: the end-of-turn token if the agent did not write it
        (``close_turn``), then the reply with the template's role markers and the next generation prompt."""
        ids = list(self.tokenizer(self._reply_prefix + message + self._reply_suffix,
                                  add_special_tokens=False)["input_ids"])
        return ([self.end_of_turn_id] if close_turn else []) + ids


@dataclass
class Dialogue:
    """The multi-turn configuration of an episode batch.

    :param factory: zero-argument factory of a new responder (one per episode slot).
    :param chat_format: how messages become tokens.
    :param max_turns: agent turns per episode (the episode ends after the last one is answered).
    :param max_turn_tokens: tokens per agent turn (the env then closes the turn).
    """

    factory: ResponderFactory
    chat_format: ChatFormat
    max_turns: int
    max_turn_tokens: int

    def new_responder(self) -> Responder:
        """A fresh responder from the factory (validated)."""
        return build_responder(self.factory)

    def open(self, responder: Responder, seed: int, split: str) -> str:
        """Reset ``responder`` (mutated: give it a new one) and return its validated first message."""
        try:
            message = responder.reset(seed=seed, options={"split": split})
        except TextEnvsError:
            raise
        except Exception as error:
            raise ResponderError(f"responder {responder_name(responder)!r}: reset() raised "
                                 f"{type(error).__name__}: {error}") from error
        return check_first_message(message, responder)

    def respond(self, responder: Responder, agent_text: str) -> tuple[Turn, Responder]:
        """The responder's answer to ``agent_text``, computed on a deep copy: ``(turn, the advanced copy)``.
        ``responder`` itself is untouched, so a step that fails later leaves the episode as it was."""
        try:
            candidate = copy.deepcopy(responder)
            result = candidate.respond(agent_text)
        except TextEnvsError:
            raise
        except Exception as error:
            raise ResponderError(f"responder {responder_name(responder)!r} raised {type(error).__name__}: {error}; "
                                 "the step was not applied (retry it, or reset)") from error
        return check_turn(result, responder), candidate


def describe_dialogue_info(info: dict[str, Any]) -> dict[str, Any]:
    """A responder's info reduced to JSON-friendly plain values (others become their ``repr``)."""
    plain: dict[str, Any] = {}
    for key, value in info.items():
        plain[str(key)] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return plain
