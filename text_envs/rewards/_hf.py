"""Loading Hugging Face tokenizers/models for the reward models (private helper)."""

from __future__ import annotations

import os
from typing import Any

from text_envs.errors import ConfigError, MissingDependencyError, UnknownModelError


def load_tokenizer_and_model(
    model: Any, auto_class: str, *, tokenizer: Any = None, reward: str
) -> tuple[Any, Any]:
    """``(AutoTokenizer.from_pretrained(tokenizer or model), <auto_class>.from_pretrained(model))``.

    ``model`` / ``tokenizer`` are a local folder or a hub id (a hub id is only fetched when the
    environment allows it; with ``HF_HUB_OFFLINE=1`` only the local cache is used). Never trusts
    remote code. A path or id that cannot be loaded raises :class:`UnknownModelError`.
    """
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ConfigError(f"reward {reward!r} needs model= (a local folder or a hub id), got {model!r}")
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise MissingDependencyError(f"reward {reward!r} needs transformers: pip install transformers") from exc
    from text_envs.models import check_model_name, quiet_transformers

    model_id = os.fspath(model)
    tok_id = os.fspath(tokenizer) if tokenizer is not None else model_id
    for name in {model_id, tok_id}:
        try:
            check_model_name(name)  # a hub id that is unknown, or unreachable and not cached, fails at once
        except UnknownModelError as error:
            raise UnknownModelError(f"reward {reward!r}: {error}") from None
    try:
        with quiet_transformers():
            tok = transformers.AutoTokenizer.from_pretrained(tok_id, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UnknownModelError(
            f"reward {reward!r}: cannot load a tokenizer from {tok_id!r} (not a local model folder, "
            f"nor a hub id available offline): {exc}"
        ) from exc
    try:
        with quiet_transformers():
            net = getattr(transformers, auto_class).from_pretrained(model_id, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UnknownModelError(
            f"reward {reward!r}: cannot load {auto_class} from {model_id!r} (not a local model folder, "
            f"nor a hub id available offline): {exc}"
        ) from exc
    net.eval()
    return tok, net


def max_length_of(tok: Any, net: Any, requested: int | None) -> int:
    """Truncation length: ``requested`` or the tokenizer's / model's limit (512 if unknown)."""
    if requested is not None:
        return requested
    limits = [getattr(tok, "model_max_length", None)]
    cfg = getattr(net, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        limits.append(getattr(cfg, attr, None))
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 512
