"""``hf_classifier``: the score of one label of any Hugging Face sequence classifier."""

from __future__ import annotations

import numbers
import os
from typing import Any

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards._hf import load_tokenizer_and_model, max_length_of
from text_envs.rewards.base import check_positive_int, iter_chunks, register_reward, resolve_device

__all__ = ["HFClassifierReward"]


class HFClassifierReward:
    """Probability (or logit) of one label of an ``AutoModelForSequenceClassification``.

    ``output="prob"`` (default): ``softmax(logits)[label]``, range ``[0, 1]`` (for a model with a
    single output, ``sigmoid(logit)``); ``output="logit"``: the raw logit of the label, range
    ``(-inf, inf)``. Completions (or ``(prompt, completion)`` text pairs with
    ``include_prompt=True``) are tokenized with right padding and truncation and scored in
    batches of ``batch_size`` (one forward pass per batch). A text that the tokenizer encodes to
    no token at all (an empty completion without special tokens) is scored as the EOS token.
    Remote code is never trusted.

    Args:
        model: hub id or local folder of the classifier (required).
        label: the label scored: a name from ``config.id2label`` (exact, else case-insensitive)
            or an index. Optional for single-output models; otherwise an unknown/missing label
            raises :class:`ConfigError` listing the model's labels.
        output: ``"prob"`` or ``"logit"``.
        include_prompt: classify the pair ``(prompt, completion)`` instead of the completion.
        tokenizer: tokenizer folder/id if it is not stored with the model.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``...
        batch_size: texts per forward pass.
        max_length: truncation length in tokens (default: the tokenizer's / model's limit).
    """

    name = "hf_classifier"

    def __init__(
        self,
        model: str | os.PathLike[str],
        label: str | int | None = None,
        output: str = "prob",
        include_prompt: bool = False,
        tokenizer: str | os.PathLike[str] | None = None,
        device: Any = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        import torch

        self._torch = torch
        if output not in ("prob", "logit"):
            raise ConfigError(f"output must be 'prob' or 'logit', got {output!r}")
        self.output = output
        self.include_prompt = bool(include_prompt)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if max_length is not None:
            check_positive_int("max_length", max_length)
        self.device = resolve_device(device)
        self.model_id = os.fspath(model) if isinstance(model, os.PathLike) else model
        self.tokenizer, self.model = load_tokenizer_and_model(
            model, "AutoModelForSequenceClassification", tokenizer=tokenizer, reward=self.name
        )
        cfg = self.model.config
        self.num_labels = int(getattr(cfg, "num_labels", 0) or len(getattr(cfg, "id2label", {}) or {}))
        self.labels = self._label_names(cfg)
        self.label_index = self._resolve_label(label)
        self.label = self.labels[self.label_index]
        # padding: right-pad (positions start at 0 for every row); give pad-less tokenizers the EOS
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ConfigError(
                    f"the tokenizer of {self.model_id!r} has neither a pad nor an EOS token; cannot batch"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = self.tokenizer.pad_token_id  # decoder classifiers find the last token with it
        self.max_length = max_length_of(self.tokenizer, self.model, max_length)
        self.model.to(self.device)

    def _label_names(self, cfg: Any) -> list[str]:
        id2label = getattr(cfg, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(self.num_labels)]

    def _resolve_label(self, label: Any) -> int:
        listing = ", ".join(f"{i}={name!r}" for i, name in enumerate(self.labels))
        if label is None:
            if self.num_labels == 1:
                return 0
            raise ConfigError(f"label= is required for {self.model_id!r}; its labels are: {listing}")
        if isinstance(label, numbers.Integral) and not isinstance(label, bool):
            if 0 <= int(label) < self.num_labels:
                return int(label)
            raise ConfigError(f"label index {label} out of range for {self.model_id!r}; its labels are: {listing}")
        if isinstance(label, str):
            if label in self.labels:
                return self.labels.index(label)
            lowered = [name.lower() for name in self.labels]
            if lowered.count(label.lower()) == 1:
                return lowered.index(label.lower())
        raise ConfigError(f"unknown label {label!r} for {self.model_id!r}; its labels are: {listing}")

    def _encode(self, ps: list[str], cs: list[str]) -> Any:
        def run(cs: list[str]) -> Any:
            args = (ps, cs) if self.include_prompt else (cs,)
            return self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

        enc = run(cs)
        empty = (enc["attention_mask"].sum(dim=1) == 0).tolist() if enc["input_ids"].shape[1] else [True] * len(cs)
        if any(empty) and self.tokenizer.eos_token:
            # a tokenizer adding no special tokens encodes "" to nothing: score the EOS token instead
            enc = run([self.tokenizer.eos_token if e else c for c, e in zip(cs, empty)])
        return enc

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        torch = self._torch
        out: list[np.ndarray] = []
        pairs = list(zip(prompts, completions))
        with torch.inference_mode():
            for chunk in iter_chunks(pairs, self.batch_size):
                enc = self._encode([p for p, _ in chunk], [c for _, c in chunk]).to(self.device)
                logits = self.model(**enc).logits.float()
                if self.output == "logit":
                    scores = logits[:, self.label_index]
                elif logits.shape[-1] == 1:
                    scores = torch.sigmoid(logits[:, 0])
                else:
                    scores = torch.softmax(logits, dim=-1)[:, self.label_index]
                out.append(scores.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def __repr__(self) -> str:
        return f"HFClassifierReward(model={self.model_id!r}, label={self.label!r}, output={self.output!r})"


register_reward(
    "hf_classifier",
    HFClassifierReward,
    description="probability (or logit) of label= from a Hugging Face sequence classifier model=, in [0, 1] for prob",
)
