"""Configuration of the TextGen environments and the construction of their parts."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from transformers import PreTrainedModel

from text_envs.devices import resolve_dtype
from text_envs.dialogue import ChatFormat, Dialogue
from text_envs.episode_batch import KL_PENALTIES, PROMPT_FORMATS, EpisodeBatch
from text_envs.errors import ConfigError
from text_envs.models import check_vocabulary, load_config, load_model, load_tokenizer
from text_envs.responders import ResponderSpec, build_responder, responder_factory
from text_envs.rewards import RewardModel
from text_envs.tasks import Task, get_task
from text_envs.validation import MAX_KL_COEF, check_bool, check_int, check_prompt, check_real, describe

#: ``reference_model`` value meaning: the policy's base model with its adapters disabled (attached later).
SHARED_REFERENCE = "<policy>"
#: Upper bound of ``max_prompt_tokens`` and ``max_new_tokens`` before the model is known (the model's context
#: length then bounds their sum, see :func:`context_length`).
MAX_WINDOW = 1_000_000

RewardSpec = str | RewardModel | Callable[[list[str], list[str]], Any] | None


def _check_models(model: Any, reference_model: Any) -> None:
    """``model`` and ``reference_model`` of an env configuration: aliases, folders, hub ids or loaded models."""
    for name, value in (("model", model), ("reference_model", reference_model)):
        if not (isinstance(value, (str, os.PathLike, PreTrainedModel)) or (name == "reference_model"
                                                                          and value is None)):
            raise ConfigError(f"{name} must be a model alias, a local folder, a hub id or a PreTrainedModel"
                              f"{' (or None)' if name == 'reference_model' else ''}, got {describe(value)}")


@dataclass
class TextGenConfig:
    """Arguments of ``gym.make("TextGen-v0", ...)`` and ``gym.make_vec("TextGen-v0", ...)``."""

    model: str | PreTrainedModel = field(default="tiny", metadata={
        "help": "Policy model alias, local path or hub id: defines the tokenizer, the vocabulary (action space) "
                "and, by default, the reference model."})
    task: str | Task = field(default="sentiment", metadata={
        "help": "Task name (see `textgen-rl tasks`) or a Task: the prompt splits and the default reward."})
    reward_model: RewardSpec = field(default=None, metadata={
        "help": "Registered reward name (see `textgen-rl rewards`), a reward-model object or a plain callable "
                "(prompts, completions) -> scores. None uses the task's default reward."})
    reward_kwargs: Mapping[str, Any] | None = field(default=None, metadata={
        "help": "Keyword arguments of a registered reward model (merged over the task's defaults)."})
    kl_coef: float = field(default=0.05, metadata={
        "help": "KL penalty coefficient beta. 0 loads no reference model at all."})
    kl_penalty: str = field(default="dense", metadata={
        "help": "'dense': pay beta * log pi_ref(a_t|s_t) every step; 'sparse': pay the sum on the last step; "
                "'deferred': as sparse, the final info adding each token's log pi_ref (ref_logprobs)."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Token budget of an episode; None uses the task's default."})
    max_prompt_tokens: int | None = field(default=None, metadata={
        "help": "Prompts are truncated from the left to this many tokens (with a warning). None: 64, or what "
                "the model's context length leaves after max_new_tokens if that is less."})
    reference_model: str | PreTrainedModel | None = field(default=None, metadata={
        "help": "Frozen reference LM of the KL penalty; None uses `model`; '<policy>' (SHARED_REFERENCE): the "
                "policy's base model with its LoRA adapters disabled, attached by the algorithm (one copy of the "
                "base weights)."})
    prompt_format: str = field(default="auto", metadata={
        "help": "'raw': the prompt text is continued; 'chat': the task's instruction (with the prompt) is the user "
                "message of the tokenizer's chat template and the completion is the assistant's reply; 'auto': "
                "chat when the tokenizer has a chat template."})
    device: str = field(default="auto", metadata={"help": "Device of the reference model: 'auto', 'cpu', 'cuda'..."})
    dtype: str = field(default="auto", metadata={"help": "dtype of the reference model: 'auto' (bf16 on CUDA, fp32 "
                                                          "on CPU), 'float32', 'bfloat16'..."})
    verbose: bool = field(default=False, metadata={
        "help": "Show transformers' progress bars while the models load (hidden by default)."})

    def __post_init__(self) -> None:
        """Validate (and normalise: numpy scalars become Python numbers) every field; see text_envs.validation."""
        _check_models(self.model, self.reference_model)
        if not isinstance(self.task, (str, Task)):
            raise ConfigError(f"task must be a task name or a Task, got {describe(self.task)}")
        if self.reward_model is not None and not isinstance(self.reward_model, str) and not callable(self.reward_model):
            raise ConfigError(f"reward_model must be None, a registered name, a reward model or a callable "
                              f"(prompts, completions) -> scores, got {describe(self.reward_model)}")
        if self.reward_kwargs is not None and not isinstance(self.reward_kwargs, Mapping):
            raise ConfigError(f"reward_kwargs must be a mapping or None, got {describe(self.reward_kwargs)}")
        if not isinstance(self.prompt_format, str) or self.prompt_format not in ("auto", *PROMPT_FORMATS):
            raise ConfigError(f"prompt_format must be one of {('auto', *PROMPT_FORMATS)}, got "
                              f"{describe(self.prompt_format)}")
        if not isinstance(self.kl_penalty, str) or self.kl_penalty not in KL_PENALTIES:
            raise ConfigError(f"kl_penalty must be one of {KL_PENALTIES}, got {describe(self.kl_penalty)}")
        self.kl_coef = check_real("kl_coef", self.kl_coef, 0.0, MAX_KL_COEF)
        if self.max_new_tokens is not None:
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 1, MAX_WINDOW)
        if self.max_prompt_tokens is not None:
            self.max_prompt_tokens = check_int("max_prompt_tokens", self.max_prompt_tokens, 1, MAX_WINDOW)
        self.verbose = check_bool("verbose", self.verbose)
        resolve_dtype(self.dtype, self.device)  # validates both, whether or not a reference model is loaded


def _text_config(model: str | PreTrainedModel) -> Any:
    config = model.config if isinstance(model, PreTrainedModel) else load_config(model)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _vocab_size(model: str | PreTrainedModel) -> int:
    if isinstance(model, PreTrainedModel):
        return int(model.get_output_embeddings().weight.shape[0])
    return int(_text_config(model).vocab_size)


def context_length(model: str | PreTrainedModel) -> int | None:
    """The longest sequence the model's positions cover (``max_position_embeddings`` / ``n_positions``), if it
    declares one."""
    config = _text_config(model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_label(model: str | PreTrainedModel) -> str:
    return str(model.name_or_path) if isinstance(model, PreTrainedModel) else str(model)


def _eos_ids(model: str | PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = model.config if isinstance(model, PreTrainedModel) else load_config(model)
    config_eos = getattr(config, "eos_token_id", None)
    ids.update([config_eos] if isinstance(config_eos, int) else list(config_eos or []))
    if not ids:
        raise ConfigError(f"model {model!r} defines no EOS token: episodes could only end at the token budget; "
                          "use a tokenizer with an eos_token")
    return frozenset(ids)


#: ``max_prompt_tokens`` when none is given (less if the model's context is shorter).
DEFAULT_MAX_PROMPT_TOKENS = 64


def _prompt_budget(config: TextGenConfig | TextChatConfig, max_new_tokens: int,
                   default: int = DEFAULT_MAX_PROMPT_TOKENS) -> int:
    """``max_prompt_tokens``, checked against the model's context length (prompt + completion must fit)."""
    limit = context_length(config.model)
    name = _model_label(config.model)
    if limit is not None and max_new_tokens >= limit:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the context length of "
                          f"{name!r} ({limit} positions): use at most {limit - 1}")
    if config.max_prompt_tokens is None:
        return default if limit is None else min(default, limit - max_new_tokens)
    if limit is not None and config.max_prompt_tokens + max_new_tokens > limit:
        raise ConfigError(f"max_prompt_tokens + max_new_tokens = {config.max_prompt_tokens} + {max_new_tokens} exceeds "
                          f"the context length of {name!r} ({limit} positions)")
    return config.max_prompt_tokens


def _prompt_format(requested: str, tokenizer: Any) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise ConfigError("prompt_format='chat' needs a tokenizer with a chat template; this one has none (use 'raw')")
    return requested if requested != "auto" else ("chat" if has_template else "raw")


def build_episode_batch(config: TextGenConfig, batch_size: int) -> tuple[EpisodeBatch, Task]:
    """Load the tokenizer, reference model, task and reward model of ``config`` into an :class:`EpisodeBatch`."""
    task = get_task(config.task)
    max_new_tokens = config.max_new_tokens or task.max_new_tokens
    max_prompt_tokens = _prompt_budget(config, max_new_tokens)
    tokenizer = load_tokenizer(_model_label(config.model), verbose=config.verbose)
    vocab_size = _vocab_size(config.model)
    check_vocabulary(tokenizer, vocab_size, _model_label(config.model))
    reward = task.build_reward(config.reward_model, config.reward_kwargs)
    reference = _load_reference(config, vocab_size)
    batch = EpisodeBatch(
        tokenizer=tokenizer, vocab_size=vocab_size, reward_model=reward, reference=reference,
        kl_coef=config.kl_coef, kl_penalty=config.kl_penalty,
        max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
        eos_token_ids=_eos_ids(config.model, tokenizer), batch_size=batch_size,
        reference_pending=config.reference_model == SHARED_REFERENCE,
        prompt_format=_prompt_format(config.prompt_format, tokenizer), instruction=task.instruction,
    )
    return batch, task


def _load_reference(config: TextGenConfig | TextChatConfig, vocab_size: int) -> PreTrainedModel | None:
    """The frozen reference model of ``config`` (None with ``kl_coef=0`` or a shared reference)."""
    reference = None
    shared = config.reference_model == SHARED_REFERENCE
    if config.kl_coef > 0 and not shared:
        source = config.reference_model if config.reference_model is not None else config.model
        if isinstance(source, PreTrainedModel) and source is config.model:
            source = copy.deepcopy(source)  # a frozen snapshot: the caller may go on training `model`
        reference = load_model(source, device=config.device, dtype=config.dtype, verbose=config.verbose)
        reference.requires_grad_(False)
        reference_vocab = int(reference.get_output_embeddings().weight.shape[0])
        if reference_vocab < vocab_size:
            raise ConfigError(f"the reference model {_model_label(source)!r} has a vocabulary of {reference_vocab} "
                              f"tokens, fewer than the policy model's {vocab_size}: use a reference with the same "
                              "tokenizer")
    return reference


def sample_prompt(task: Task, split: str, rng: Any) -> str:
    """Draw one prompt of ``task``'s ``split`` with the numpy generator ``rng``."""
    examples = task.split(split)
    return examples[int(rng.integers(len(examples)))].prompt


RESET_OPTIONS = ("prompt", "split")


def parse_reset_options(options: Mapping[str, Any] | None, allowed: tuple[str, ...] = RESET_OPTIONS) -> dict[str, Any]:
    """Validate ``reset(options=...)`` without side effects: known keys only, ``split`` in train/eval, prompts
    valid text, ``group_size`` a positive integer. Returns a new dict with ``split`` filled in."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"reset options must be a dict or None, got {describe(options)}")
    unknown = sorted(repr(key) for key in options if key not in allowed)
    if unknown:
        raise ConfigError(f"unknown reset option(s) {', '.join(unknown)}; accepted: {list(allowed)}")
    parsed = dict(options)
    split = parsed.setdefault("split", "train")
    if not isinstance(split, str) or split not in ("train", "eval"):
        raise ConfigError(f"reset option split must be 'train' or 'eval', got {describe(split)}")
    if "prompt" in parsed and "prompts" in parsed:
        raise ConfigError("reset options prompt and prompts exclude each other: give one")
    if "prompt" in parsed:
        check_prompt(parsed["prompt"], "reset option prompt")
    if "prompts" in parsed:
        prompts = parsed["prompts"]
        if not isinstance(prompts, (list, tuple)):
            raise ConfigError(f"reset option prompts must be a list of strings, got {describe(prompts)}")
        parsed["prompts"] = [check_prompt(p, f"reset option prompts[{i}]") for i, p in enumerate(prompts)]
    if "group_size" in parsed:
        parsed["group_size"] = check_int("reset option group_size", parsed["group_size"], 1)
    return parsed


# ------------------------------------------------------------------------------------------ TextChat-v0
#: Defaults of ``TextChat-v0``'s budgets (the first message's tokens are bounded by ``max_prompt_tokens``).
DEFAULT_MAX_TURNS = 4
DEFAULT_MAX_TURN_TOKENS = 32
DEFAULT_MAX_EPISODE_TOKENS = 192
DEFAULT_CHAT_PROMPT_TOKENS = 256


@dataclass
class TextChatConfig:
    """Arguments of ``gym.make("TextChat-v0", ...)`` and ``gym.make_vec("TextChat-v0", ...)``."""

    model: str | PreTrainedModel = field(default="tiny", metadata={
        "help": "Policy model alias, local path or hub id: defines the tokenizer, the vocabulary (action space) "
                "and, by default, the reference model."})
    task: str = field(default="guess-number", metadata={
        "help": "The multi-turn task: a registered responder name (see `textgen-rl tasks`) or "
                "'textarena:<GameId>'."})
    responder: ResponderSpec | None = field(default=None, metadata={
        "help": "The other side of the conversation: a registered name, 'textarena:<GameId>' or a zero-argument "
                "factory returning a responder (one per sub-env). None: the task's responder."})
    kl_coef: float = field(default=0.05, metadata={
        "help": "KL penalty coefficient beta (on agent tokens only). 0 loads no reference model at all."})
    kl_penalty: str = field(default="dense", metadata={
        "help": "'dense': pay beta * log pi_ref(a_t|s_t) every agent step; 'sparse': pay the sum on the last step; "
                "'deferred': as sparse, the final info adding each agent token's log pi_ref (ref_logprobs)."})
    max_turns: int = field(default=DEFAULT_MAX_TURNS, metadata={
        "help": "Agent turns per episode: the episode ends once the last one is answered."})
    max_turn_tokens: int = field(default=DEFAULT_MAX_TURN_TOKENS, metadata={
        "help": "Tokens per agent turn: the env closes a longer turn with the end-of-turn token."})
    max_episode_tokens: int = field(default=DEFAULT_MAX_EPISODE_TOKENS, metadata={
        "help": "Budget of agent and responder tokens after the first message (the observation holds "
                "max_prompt_tokens + max_episode_tokens tokens)."})
    max_prompt_tokens: int | None = field(default=None, metadata={
        "help": "The first message is truncated from the left to this many tokens (with a warning). None: 256, or "
                "what the model's context length leaves after max_episode_tokens (64 for the bundled tiny LM)."})
    reference_model: str | PreTrainedModel | None = field(default=None, metadata={
        "help": "Frozen reference LM of the KL penalty (as in TextGen-v0; '<policy>': a LoRA policy's base)."})
    prompt_format: str = field(default="auto", metadata={
        "help": "'chat': messages through the tokenizer's chat template; 'raw': the plain template "
                "'User: ...\\nAssistant:'; 'auto': chat when the tokenizer has a chat template."})
    device: str = field(default="auto", metadata={"help": "Device of the reference model."})
    dtype: str = field(default="auto", metadata={"help": "dtype of the reference model."})
    verbose: bool = field(default=False, metadata={"help": "Show transformers' progress bars while loading."})

    def __post_init__(self) -> None:
        """Validate (and normalise) every field before anything is loaded."""
        _check_models(self.model, self.reference_model)
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a responder name or 'textarena:<GameId>', got {describe(self.task)}")
        if self.responder is not None and not isinstance(self.responder, str) and not callable(self.responder):
            raise ConfigError(f"responder must be None, a registered name, 'textarena:<GameId>' or a zero-argument "
                              f"factory, got {describe(self.responder)}")
        if not isinstance(self.prompt_format, str) or self.prompt_format not in ("auto", *PROMPT_FORMATS):
            raise ConfigError(f"prompt_format must be one of {('auto', *PROMPT_FORMATS)}, got "
                              f"{describe(self.prompt_format)}")
        if not isinstance(self.kl_penalty, str) or self.kl_penalty not in KL_PENALTIES:
            raise ConfigError(f"kl_penalty must be one of {KL_PENALTIES}, got {describe(self.kl_penalty)}")
        self.kl_coef = check_real("kl_coef", self.kl_coef, 0.0, MAX_KL_COEF)
        self.max_turns = check_int("max_turns", self.max_turns, 1, MAX_WINDOW)
        self.max_episode_tokens = check_int("max_episode_tokens", self.max_episode_tokens, 2, MAX_WINDOW)
        self.max_turn_tokens = check_int("max_turn_tokens", self.max_turn_tokens, 1, self.max_episode_tokens)
        if self.max_prompt_tokens is not None:
            self.max_prompt_tokens = check_int("max_prompt_tokens", self.max_prompt_tokens, 1, MAX_WINDOW)
        self.verbose = check_bool("verbose", self.verbose)
        resolve_dtype(self.dtype, self.device)

    @property
    def responder_spec(self) -> ResponderSpec:
        """What builds the responders: ``responder``, else the task's name."""
        return self.responder if self.responder is not None else self.task


def build_chat_batch(config: TextChatConfig, batch_size: int) -> EpisodeBatch:
    """The multi-turn :class:`EpisodeBatch` of ``config``: tokenizer, reference model, chat format and
    responder factory (one responder is built and checked now, so a bad factory fails here)."""
    factory = responder_factory(config.responder_spec)
    build_responder(factory)
    max_prompt_tokens = _prompt_budget(config, config.max_episode_tokens, DEFAULT_CHAT_PROMPT_TOKENS)
    label = _model_label(config.model)
    tokenizer = load_tokenizer(label, verbose=config.verbose)
    vocab_size = _vocab_size(config.model)
    check_vocabulary(tokenizer, vocab_size, label)
    chat_format = ChatFormat(tokenizer, use_template=_prompt_format(config.prompt_format, tokenizer) == "chat")
    dialogue = Dialogue(factory, chat_format, config.max_turns, config.max_turn_tokens)
    return EpisodeBatch(
        tokenizer=tokenizer, vocab_size=vocab_size, reward_model=None, reference=_load_reference(config, vocab_size),
        kl_coef=config.kl_coef, kl_penalty=config.kl_penalty, max_new_tokens=config.max_episode_tokens,
        max_prompt_tokens=max_prompt_tokens, eos_token_ids=_eos_ids(config.model, tokenizer), batch_size=batch_size,
        reference_pending=config.reference_model == SHARED_REFERENCE,
        prompt_format=_prompt_format(config.prompt_format, tokenizer), dialogue=dialogue,
    )
