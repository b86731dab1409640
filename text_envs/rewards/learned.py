"""``learned``: a reward model trained from human feedback with ``textgen-rl train-rm``.

>>> reward = make_reward("learned", path="rm/")                       # doctest: +SKIP
>>> reward(["The movie was"], [" wonderful, I loved it."])            # doctest: +SKIP
array([2.31])

The folder is a Hugging Face model folder (``config.json``, weights, tokenizer files) loadable by
``AutoModelForSequenceClassification`` with a single output (``num_labels=1``); the folders that
``textgen-rl train-rm`` writes also hold ``reward_model.json`` (training metadata, see
:mod:`agents.rlhf.reward_training`). Any such folder works, e.g. an off-the-shelf reward model
saved with ``save_pretrained``. The score of a pair is the model's scalar output on
:func:`rm_input_text` ``(prompt, completion)``, the same text it was trained on.

On the command line: ``--reward-model learned:rm/`` (see :func:`parse_reward_spec`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards.base import check_positive_int, iter_chunks, join_prompt, register_reward, resolve_device

__all__ = ["LearnedReward", "METADATA_FILE", "parse_reward_spec", "rm_input_text"]

#: Metadata file written by ``textgen-rl train-rm`` next to the model.
METADATA_FILE = "reward_model.json"

_HOW_TO_CREATE = "create one with `textgen-rl train-rm --data feedback.jsonl --out DIR` (collect feedback with `textgen-rl label`)"


def rm_input_text(prompt: str, completion: str) -> str:
    """The text a learned reward model reads: ``prompt + completion`` (a space is inserted when
    neither side has whitespace at the boundary, as in :func:`~text_envs.rewards.base.join_prompt`)."""
    return join_prompt(prompt, completion)


def _check_folder(path: Path) -> dict[str, Any]:
    """Validate a reward-model folder; return its metadata (``{}`` if it has no reward_model.json)."""
    if not path.exists():
        raise ConfigError(f"learned reward model folder {str(path)!r} does not exist; {_HOW_TO_CREATE}")
    if not path.is_dir():
        raise ConfigError(f"learned reward model path {str(path)!r} is not a folder; {_HOW_TO_CREATE}")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{str(path)!r} is not a reward model folder (no config.json); {_HOW_TO_CREATE}"
        )
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{str(meta_path)!r} is not valid JSON ({error}); {_HOW_TO_CREATE}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{str(meta_path)!r} must hold a JSON object; {_HOW_TO_CREATE}")
    return meta


class LearnedReward:
    """Scores ``prompt + completion`` with a sequence-classification model with one output.

    Args:
        path: the model folder (from ``textgen-rl train-rm`` or any ``save_pretrained`` folder of a
            ``AutoModelForSequenceClassification`` model with ``num_labels=1``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda[:i]"``.
        batch_size: pairs per forward pass.
        max_length: token limit per text (the training value from ``reward_model.json`` by
            default, else 512); longer texts keep their *end* (the completion).
    """

    name = "learned"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: Any = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        if path is None or (isinstance(path, str) and not path.strip()):
            raise ConfigError(f"the learned reward model needs path= (a model folder); {_HOW_TO_CREATE}")
        self.path = Path(path).expanduser()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.metadata = _check_folder(self.path)
        if max_length is None:
            trained = self.metadata.get("config")
            max_length = (trained.get("max_length") if isinstance(trained, dict) else None) or 512
        self.max_length = check_positive_int("max_length", max_length)
        self.device = resolve_device(device)

        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from text_envs.models import quiet_transformers

        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                self.model = AutoModelForSequenceClassification.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"cannot load the reward model in {str(self.path)!r}: {first_line}; {_HOW_TO_CREATE}") from None
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"the model in {str(self.path)!r} has {self.model.config.num_labels} outputs; a reward model needs "
                f"exactly one (num_labels=1); {_HOW_TO_CREATE}"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"
        self.model.to(self.device).eval()
        self._torch = torch

    def scores_for_texts(self, texts: list[str]) -> np.ndarray:
        """Scalar output of the model for each text (float64), in chunks of ``batch_size``."""
        torch = self._torch
        out = np.empty(len(texts), dtype=np.float64)
        # sort by length so each chunk pads little; scores go back to their original positions
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for chunk in iter_chunks(order, self.batch_size):
                batch = self.tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits  # (chunk, 1)
                out[list(chunk)] = logits[:, 0].float().cpu().numpy().astype(np.float64)
        return out

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return self.scores_for_texts([rm_input_text(p, c) for p, c in zip(prompts, completions)])

    def __repr__(self) -> str:
        return f"LearnedReward(path={str(self.path)!r}, device={str(self.device)!r})"


def parse_reward_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a command-line reward spec into ``(name, kwargs)``.

    * ``"learned:rm/"`` -> ``("learned", {"path": "rm/"})`` (everything after the first colon is
      the folder, so paths may contain ``:`` or ``=``);
    * ``"name"`` -> ``("name", {})``;
    * ``"name:key=value,key2=value2"`` -> ``("name", {"key": value, ...})``, each value parsed as
      JSON when it is valid JSON (numbers, true/false, lists) and kept as a string otherwise.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward spec must be a non-empty string like 'sentiment' or 'learned:rm/', got {spec!r}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"reward spec {spec!r} has no reward name before ':'")
    if not sep:
        return name, {}
    if name == "learned":
        if not rest.strip():
            raise ConfigError(f"reward spec {spec!r}: give the model folder after 'learned:', e.g. learned:rm/")
        return name, {"path": rest}
    kwargs: dict[str, Any] = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"reward spec {spec!r}: expected key=value after '{name}:', got {part!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except ValueError:
            kwargs[key.strip()] = value
    return name, kwargs


register_reward(
    "learned",
    LearnedReward,
    description="a reward model trained with `textgen-rl train-rm` (path=folder): scalar score of prompt + completion",
)
