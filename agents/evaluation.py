"""Held-out evaluation of a language model (or a TransformerPolicy) on a TextGen task.

Completions are sampled with a KV cache through the batched env on the task's ``eval`` split (the
same prompts for every model, chosen by ``seed``), scored by the task's reward model, and
compared with the reference model: ``kl`` is the sampled ``sum_t log pi(a_t|s_t) - log pi_ref(a_t|s_t)``
per sequence (an unbiased estimate of ``KL(pi || pi_ref)``).

Completion ``i`` is sampled with its own random stream, seeded by ``(seed, i)``: the result does not
depend on how many completions run in parallel, so ``textgen-rl train`` (which evaluates with its
training env), ``textgen-rl eval`` and ``textgen-rl compare`` report the same figures for the same
model, prompts and seed (:data:`DEFAULT_EVAL_SEED` in all three).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from agents.rl_math import process_logits
from text_envs.errors import ConfigError
from text_envs.lm_stepper import BatchedLMStepper
from text_envs.models import ADAPTER_CONFIG, load_model
from text_envs.tasks import DEFAULT_EVAL_SEED, Task, get_task
from agents.vec_env import vector_info_entry
from text_envs.chat_env import SEED_BOUND
from text_envs.vector_env import TextGenVectorEnv

#: File written next to an exported model, naming the base (reference) model and the task.
EXPORT_METADATA = "textgen_rl.json"


@dataclass
class EvalResult:
    """Metrics of one evaluation."""

    score_mean: float
    score_std: float
    score_se: float  # standard error of score_mean: sample std (ddof=1) / sqrt(n)
    kl_mean: float
    distinct_1: float
    distinct_2: float
    length_mean: float
    n: int
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams in ``texts`` (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def reference_for(model: str | Path) -> str | None:
    """The base model recorded in an exported folder's ``textgen_rl.json``, if any."""
    meta = Path(model) / EXPORT_METADATA
    return json.loads(meta.read_text())["base_model"] if meta.is_file() else None


def _eval_prompts(task: Task, n: int, seed: int) -> list[str]:
    examples = task.split("eval")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    return [examples[int(i)].prompt for i in np.resize(order, n)]


def _episode_generators(seed: int, first: int, count: int) -> list[torch.Generator]:
    """One generator per completion ``first .. first + count - 1``, seeded by ``(seed, index)``."""
    states = [np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
              for index in range(first, first + count)]
    return [torch.Generator().manual_seed(int(state)) for state in states]


def _sample_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs (B, V)`` by inverse CDF, row ``i`` drawing from ``generators[i]``. ``(B,)``"""
    draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])  # (B,)
    cdf = probs.double().cumsum(-1)  # (B, V)
    index = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True)
    return index.clamp_(max=probs.shape[-1] - 1).flatten()


def _eval_episode_seeds(n: int, seed: int) -> list[int]:
    """The responder seeds of ``n`` held-out multi-turn episodes (``TextChat-v0``), chosen by ``seed``."""
    return [int(s) for s in np.random.default_rng(seed).integers(SEED_BOUND, size=n)]


def _new_tokens(obs: dict[str, np.ndarray], stepper: BatchedLMStepper, actions: list[int]) -> list[list[int]]:
    """Per slot, what the observation holds beyond what the stepper consumed: the action and, after a
    multi-turn agent turn, the env's reply (a slot that started a new episode just gets its action: ignored)."""
    chunks = []
    for slot, action in enumerate(actions):
        real = obs["input_ids"][slot][obs["attention_mask"][slot].astype(bool)].tolist()
        consumed = len(stepper.tokens[slot])
        continues = len(real) > consumed and real[consumed] == action
        chunks.append(real[consumed:] if continues else [action])
    return chunks


@torch.no_grad()
def _sample_batch(lm: PreTrainedModel, env: TextGenVectorEnv, starts: list[Any], temperature: float,
                  generators: list[torch.Generator], seed: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Run one episode per prompt (multi-turn: per responder seed); returns the final infos and the summed
    log pi of each completion (of the agent's tokens).

    The env is reset with ``seed``: the prompts of the episodes it starts in slots that finish early
    (ignored, but batched with the others) are then the same whatever the env did before, so the
    batched forwards, hence the results, are bit-identical from one evaluation to the next.
    """
    multi_turn = env.batch.dialogue is not None
    options = {"episode_seeds": starts, "split": "eval"} if multi_turn else {"prompts": starts}
    obs, _ = env.reset(seed=seed, options=options)
    stepper = BatchedLMStepper(lm, env.num_envs, int(env.tokenizer.pad_token_id))
    device = stepper.device
    real = [obs["input_ids"][i][obs["attention_mask"][i].astype(bool)].tolist() for i in range(env.num_envs)]
    logits = stepper.prefill(list(range(env.num_envs)), real).logits
    finals: list[dict[str, Any] | None] = [None] * env.num_envs
    logp_sums = np.zeros(env.num_envs)
    while any(f is None for f in finals):
        logp = torch.log_softmax(logits.float(), -1).cpu()
        probs = torch.softmax(process_logits(logits.float(), temperature), -1).cpu()
        actions = _sample_rows(probs, generators)
        logp_sums += np.where([f is None for f in finals], logp.gather(1, actions[:, None]).flatten().numpy(), 0)
        obs, _, done, _, info = env.step(actions.numpy())
        for i in np.flatnonzero(done):
            if finals[i] is None:
                finals[i] = {k: vector_info_entry(v, i) for k, v in info["final_info"].items()
                             if not k.startswith("_")}
        if all(f is not None for f in finals):
            break
        chunks = _new_tokens(obs, stepper, actions.tolist()) if multi_turn else None
        if chunks is not None and any(len(chunk) > 1 for chunk in chunks):
            logits = stepper.extend(chunks).logits  # the env's replies: one prefill of the new chunks
        else:
            logits = stepper.step(actions.to(device)).logits
    return finals, logp_sums.tolist()


def _evaluation_env(model: str | Path | PreTrainedModel, lm: PreTrainedModel, task: str | Task, num_envs: int,
                    reference_model: str | None, device: str, env_id: str,
                    options: dict[str, Any]) -> TextGenVectorEnv:
    """The vector env of an evaluation (``kl_coef=1``: the KL is read off its reference term, the sum of the
    completion's ``log pi_ref``, which the sparse mode computes in one teacher-forced pass at the episode's end)."""
    from text_envs.chat_env import TextChatVectorEnv

    reference = reference_model or (reference_for(model) if not isinstance(model, torch.nn.Module) else None)
    # an adapter folder has no config of its own: the env reads vocabulary and tokenizer from the merged model
    adapters = not isinstance(model, torch.nn.Module) and (Path(model) / ADAPTER_CONFIG).is_file()
    env_model = lm if isinstance(model, torch.nn.Module) or adapters else str(model)
    env_class = TextChatVectorEnv if env_id == "TextChat-v0" else TextGenVectorEnv
    given = {key: value for key, value in options.items() if value is not None}
    return env_class(num_envs=num_envs, model=env_model, task=task, kl_coef=1.0, kl_penalty="sparse",
                     reference_model=reference, device=device, **given)


def evaluate_model(model: str | Path | PreTrainedModel, task: str | Task = "sentiment", n: int = 64,
                   reference_model: str | None = None, reward_model: Any = None,
                   reward_kwargs: dict[str, Any] | None = None, max_new_tokens: int | None = None,
                   num_envs: int = 16, temperature: float = 1.0, seed: int = DEFAULT_EVAL_SEED, device: str = "auto",
                   samples: int = 4, env: TextGenVectorEnv | None = None, env_id: str = "TextGen-v0",
                   max_turns: int | None = None, max_turn_tokens: int | None = None) -> EvalResult:
    """Score ``model`` on ``n`` held-out prompts of ``task`` (``TextChat-v0``: ``n`` held-out episodes).

    :param model: alias, path (e.g. an exported ``runs/NAME/hf``) or loaded causal LM.
    :param task: task name or Task.
    :param n: number of completions (prompts drawn from the eval split with ``seed``).
    :param reference_model: reference for the KL; default: the base model recorded in an exported
        folder, else ``model`` itself.
    :param reward_model: reward override (as in ``gym.make``); default: the task's.
    :param reward_kwargs: its keyword arguments.
    :param max_new_tokens: token budget; default: the task's.
    :param num_envs: completions sampled in parallel.
    :param temperature: sampling temperature.
    :param seed: seed of the prompt choice and of sampling (completion ``i`` samples with its own stream
        seeded by ``(seed, i)``, so the result does not depend on ``num_envs`` or on the env passed).
    :param device: device of the models.
    :param samples: number of sample texts kept in the result.
    :param env: an existing vector env to reuse (its reference and reward are used).
    :param env_id: the env built when ``env`` is None: ``"TextGen-v0"``, or ``"TextChat-v0"`` (``task`` then
        names a responder, ``max_new_tokens`` is the episode's budget of agent and responder tokens, and
        ``reward_model`` must be None: the responder pays the rewards).
    :param max_turns: ``TextChat-v0``: agent turns per episode (default: the env's).
    :param max_turn_tokens: ``TextChat-v0``: tokens per agent turn (default: the env's).
    """
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive int, got {n!r}")
    if env_id not in ("TextGen-v0", "TextChat-v0"):
        raise ConfigError(f"env_id must be 'TextGen-v0' or 'TextChat-v0', got {env_id!r}")
    if env_id == "TextGen-v0" and (max_turns is not None or max_turn_tokens is not None):
        raise ConfigError("max_turns and max_turn_tokens apply to env_id='TextChat-v0'")
    if env_id == "TextChat-v0" and reward_model is not None:
        raise ConfigError("reward_model applies to TextGen-v0: in TextChat-v0 the responder pays the rewards")
    lm = load_model(model, device=device)
    if env is None:
        env = _evaluation_env(model, lm, task, min(num_envs, n), reference_model, device, env_id, {
            "reward_model": reward_model, "reward_kwargs": reward_kwargs, "max_new_tokens": max_new_tokens,
        } if env_id == "TextGen-v0" else {
            "max_episode_tokens": max_new_tokens, "max_turns": max_turns, "max_turn_tokens": max_turn_tokens})
    multi_turn = env.batch.dialogue is not None
    prompts = _eval_episode_seeds(n, seed) if multi_turn else _eval_prompts(get_task(task), n, seed)
    infos: list[dict[str, Any]] = []
    logps: list[float] = []
    for start in range(0, n, env.num_envs):
        chunk = prompts[start:start + env.num_envs]
        chunk = chunk + [chunk[-1]] * (env.num_envs - len(chunk))
        finals, logp = _sample_batch(lm, env, chunk, temperature, _episode_generators(seed, start, env.num_envs),
                                     seed + start)
        keep = min(env.num_envs, n - start)
        infos.extend(finals[:keep])
        logps.extend(logp[:keep])
    scores = np.array([float(i["score"]) for i in infos])
    kls = np.array(logps) - np.array([float(i["kl_ref_logprob_sum"]) for i in infos])
    texts = [str(i["text"]) for i in infos]
    standard_error = float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else float("nan")
    return EvalResult(score_mean=float(scores.mean()), score_std=float(scores.std()), score_se=standard_error,
                      kl_mean=float(kls.mean()),
                      distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
                      length_mean=float(np.mean([int(i["num_tokens"]) for i in infos])), n=len(infos),
                      samples=[{"prompt": str(i["prompt"]), "text": str(i["text"]), "score": float(i["score"])}
                               for i in infos[:samples]])
