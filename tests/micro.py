"""A micro language model for fast, exact tests: vocabulary ``<pad> </s> <unk> a b`` (5 tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from text_envs.tasks import Task, TaskExample

MICRO_VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4}
TOKEN_A = MICRO_VOCAB["a"]


def build_micro_model(path: Path, seed: int, logit_scale: float = 1.0) -> Path:
    """Save a random 1-layer GPT-2 over the 5-token vocabulary, with its tokenizer, to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    core = Tokenizer(models.WordLevel(MICRO_VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=5, n_layer=1, n_embd=16, n_head=2, n_positions=32, eos_token_id=1,
                        pad_token_id=0, bos_token_id=None)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def micro_task(max_new_tokens: int = 3) -> Task:
    """Prompts over the micro vocabulary."""
    prompts = ["a b", "b a", "b b a", "a a b", "b", "a"]
    return Task(name="micro", description="micro-vocabulary prompts for tests",
                train=tuple(TaskExample(p) for p in prompts), eval=tuple(TaskExample(p) for p in prompts[:3]),
                reward="length", reward_kwargs={}, max_new_tokens=max_new_tokens, source="generated in tests")


def micro_env(micro_dir: Path, n: int = 8, kl_coef: float = 0.0, **vec_kwargs: Any):
    """An SB3 vector env over the micro model, rewarding the token ``a``."""
    from agents import make_text_vec_env

    return make_text_vec_env(n, env_kwargs={"model": str(micro_dir), "task": micro_task(3), "reward_model": count_a,
                                            "kl_coef": kl_coef}, **vec_kwargs)


def prob_of_a(policy: Any, env: Any) -> float:
    """Mean probability of emitting ``a`` over a fresh batch of prompts."""
    from stable_baselines3.common.utils import obs_as_tensor

    obs = obs_as_tensor(env.reset(), policy.device)
    with torch.no_grad():
        return float(policy.get_distribution(obs).distribution.probs[:, TOKEN_A].mean())


def count_a(prompts: list[str], completions: list[str]) -> list[float]:
    """Reward: fraction of completion words that are ``a``."""
    return [c.split().count("a") / max(1, len(c.split())) for c in completions]
