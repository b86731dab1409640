"""Configuration of the TextGen environments and the construction of their parts."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from transformers import PreTrainedModel

from text_envs.devices import resolve_dtype
from text_envs.episode_batch import KL_PENALTIES, EpisodeBatch
from text_envs.errors import ConfigError
from text_envs.models import check_vocabulary, load_config, load_model, load_tokenizer
from text_envs.rewards import RewardModel
from text_envs.tasks import Task, get_task

RewardSpec = str | RewardModel | Callable[[list[str], list[str]], Any] | None


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
        "help": "'dense': pay beta * log pi_ref(a_t|s_t) every step; 'sparse': pay the sum on the last step."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Token budget of an episode; None uses the task's default."})
    max_prompt_tokens: int = field(default=64, metadata={
        "help": "Prompts are truncated from the left to this many tokens (with a warning)."})
    reference_model: str | PreTrainedModel | None = field(default=None, metadata={
        "help": "Frozen reference LM of the KL penalty; None uses `model`."})
    device: str = field(default="auto", metadata={"help": "Device of the reference model: 'auto', 'cpu', 'cuda'..."})
    dtype: str = field(default="auto", metadata={"help": "dtype of the reference model: 'auto' (bf16 on CUDA, fp32 "
                                                          "on CPU), 'float32', 'bfloat16'..."})
    verbose: bool = field(default=False, metadata={
        "help": "Show transformers' progress bars while the models load (hidden by default)."})

    def __post_init__(self) -> None:
        if self.kl_penalty not in KL_PENALTIES:
            raise ConfigError(f"kl_penalty must be one of {KL_PENALTIES}, got {self.kl_penalty!r}")
        if not isinstance(self.kl_coef, (int, float)) or self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be a number >= 0, got {self.kl_coef!r}")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"max_new_tokens must be a positive int or None, got {self.max_new_tokens!r}")
        if not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be a positive int, got {self.max_prompt_tokens!r}")
        resolve_dtype(self.dtype, self.device)  # validates both, whether or not a reference model is loaded


def _vocab_size(model: str | PreTrainedModel) -> int:
    if isinstance(model, PreTrainedModel):
        return int(model.get_output_embeddings().weight.shape[0])
    config = load_config(model)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.vocab_size)


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


def build_episode_batch(config: TextGenConfig, batch_size: int) -> tuple[EpisodeBatch, Task]:
    """Load the tokenizer, reference model, task and reward model of ``config`` into an :class:`EpisodeBatch`."""
    task = get_task(config.task)
    tokenizer = load_tokenizer(_model_label(config.model), verbose=config.verbose)
    vocab_size = _vocab_size(config.model)
    check_vocabulary(tokenizer, vocab_size, _model_label(config.model))
    reward = task.build_reward(config.reward_model, config.reward_kwargs)
    reference = None
    if config.kl_coef > 0:
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
    batch = EpisodeBatch(
        tokenizer=tokenizer, vocab_size=vocab_size, reward_model=reward, reference=reference,
        kl_coef=config.kl_coef, kl_penalty=config.kl_penalty,
        max_new_tokens=config.max_new_tokens or task.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens,
        eos_token_ids=_eos_ids(config.model, tokenizer), batch_size=batch_size,
    )
    return batch, task


def sample_prompt(task: Task, split: str, rng: Any) -> str:
    """Draw one prompt of ``task``'s ``split`` with the numpy generator ``rng``."""
    examples = task.split(split)
    return examples[int(rng.integers(len(examples)))].prompt


RESET_OPTIONS = ("prompt", "split")


def parse_reset_options(options: Mapping[str, Any] | None, allowed: tuple[str, ...] = RESET_OPTIONS) -> dict[str, Any]:
    """Validate ``reset(options=...)``: known keys only, ``split`` in train/eval."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown reset option(s) {unknown}; accepted: {list(allowed)}")
    split = options.setdefault("split", "train")
    if split not in ("train", "eval"):
        raise ConfigError(f"reset option split must be 'train' or 'eval', got {split!r}")
    return options
