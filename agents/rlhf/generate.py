"""Completions to label: sampled from a causal LM, deterministically, and cached next to the output.

``textgen-rl label`` samples ``k`` completions for each of ``n`` prompts. Sampling is seeded per
prompt (``torch.manual_seed(seed * 1_000_003 + index)`` before each prompt's ``generate``), so
the same arguments give the same completions and prompt ``i`` does not depend on ``n``. The
generations are also saved to ``<out>.items.json`` (atomically) the first time; a resumed session
reuses that file, so it shows exactly the same items even on another machine or library version.

The labelling *items* are derived from the generations and the mode:

* ``compare``: one item per pair of completions of a prompt (``k=2`` gives one item per prompt),
  id ``compare-<prompt>-<a>-<b>``; the answer is a preference line;
* ``rate``: one item per completion, id ``rate-<prompt>-<j>``; the answer is a rating line;
* ``rank``: one item per prompt with all ``k`` completions, id ``rank-<prompt>``; the answer is
  a ranking line.

Ids carry the mode, so one output file can hold answers of several modes without clashes.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from text_envs.atomic import write_json_atomic
from text_envs.errors import ConfigError

__all__ = [
    "MODES",
    "Generation",
    "LabelItem",
    "GenerationSettings",
    "generate_completions",
    "build_items",
    "items_path_for",
    "load_or_generate",
    "task_prompts",
]

MODES = ("compare", "rate", "rank")
ITEMS_FORMAT = "textgen-rl-label-items"


@dataclass(frozen=True)
class Generation:
    """A prompt (``index`` in the prompt list) and its sampled completions."""

    index: int
    prompt: str
    completions: tuple[str, ...]


@dataclass(frozen=True)
class LabelItem:
    """One question shown to the labeller."""

    id: str
    prompt: str
    completions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "completions": list(self.completions)}


@dataclass(frozen=True)
class GenerationSettings:
    """Everything the generated completions depend on (stored in the items file)."""

    model: str
    task: str
    n: int
    k: int
    seed: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 0.95


def _seed_for(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    k: int,
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.95,
) -> list[Generation]:
    """Sample ``k`` completions of each prompt with ``model.generate`` (seeded per prompt)."""
    import torch

    if k < 1:
        raise ConfigError(f"k={k}: expected at least 1 completion per prompt")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    device = next(model.parameters()).device
    # finished rows are filled with EOS (not the pad token, which would trigger transformers'
    # "input_ids may be padded" warning inside generate); both are dropped from the text below
    pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    generations = []
    model.eval()
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:  # empty prompt: start from BOS (or EOS for GPT-2-like tokenizers)
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ids = torch.tensor([[start]])
        ids = ids.to(device)
        torch.manual_seed(_seed_for(seed, index))
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
        prompt_ids = ids[0].tolist()
        prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
        completions = []
        for row in out:
            new_ids = [t for t in row[len(prompt_ids) :].tolist() if t not in (pad_id, tokenizer.pad_token_id)]
            full = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
            # decoding the whole sequence keeps the leading space of the first new word
            text = full[len(prompt_text) :] if full.startswith(prompt_text) else tokenizer.decode(new_ids, skip_special_tokens=True)
            completions.append(text)
        generations.append(Generation(index, prompt, tuple(completions)))
    return generations


def build_items(generations: Sequence[Generation], mode: str) -> list[LabelItem]:
    """The labelling items of ``mode`` for ``generations`` (see the module docstring)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    items = []
    for gen in generations:
        if mode == "compare":
            for a, b in itertools.combinations(range(len(gen.completions)), 2):
                items.append(LabelItem(f"compare-{gen.index}-{a}-{b}", gen.prompt, (gen.completions[a], gen.completions[b])))
        elif mode == "rate":
            for j, completion in enumerate(gen.completions):
                items.append(LabelItem(f"rate-{gen.index}-{j}", gen.prompt, (completion,)))
        else:
            items.append(LabelItem(f"rank-{gen.index}", gen.prompt, tuple(gen.completions)))
    return items


def items_path_for(out: str | os.PathLike[str]) -> Path:
    """``<out>.items.json``: where the generations of a labelling session are cached."""
    out = Path(out)
    return out.with_name(out.name + ".items.json")


def _read_items_file(path: Path) -> tuple[dict[str, Any], list[Generation]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != ITEMS_FORMAT:
            raise ValueError(f'"format" is not {ITEMS_FORMAT!r}')
        settings = payload["settings"]
        generations = [
            Generation(int(g["index"]), str(g["prompt"]), tuple(str(c) for c in g["completions"]))
            for g in payload["generations"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"cannot read the items file {path}: {error}; delete it to regenerate the items") from None
    return settings, generations


def load_or_generate(
    out: str | os.PathLike[str],
    settings: GenerationSettings,
    generate: Callable[[], list[Generation]],
) -> list[Generation]:
    """Reuse ``<out>.items.json`` if it was made with ``settings``, else call ``generate`` and save it.

    A items file made with other settings is an error (it belongs to answers already in ``out``).
    """
    path = items_path_for(out)
    wanted = asdict(settings)
    if path.exists():
        stored, generations = _read_items_file(path)
        diffs = [f"{key}={stored.get(key)!r} (now {value!r})" for key, value in wanted.items() if stored.get(key) != value]
        if diffs:
            raise ConfigError(
                f"{path} was generated with other settings: {', '.join(diffs)}; "
                f"rerun with the same settings to resume, or use another --out"
            )
        return generations
    generations = generate()
    write_json_atomic(
        path,
        {
            "format": ITEMS_FORMAT,
            "version": 1,
            "settings": wanted,
            "generations": [{"index": g.index, "prompt": g.prompt, "completions": list(g.completions)} for g in generations],
        },
        indent=1,
    )
    return generations


def task_prompts(task_name: str, n: int) -> list[str]:
    """The first ``n`` prompts of the task's train split (cycled if the split is shorter)."""
    from text_envs.tasks import get_task

    if n < 1:
        raise ConfigError(f"n={n}: expected at least 1 prompt")
    task = get_task(task_name)
    train = list(task.train)
    if not train:
        raise ConfigError(f"task {task_name!r} has no train prompts")
    return [train[i % len(train)].prompt for i in range(n)]
