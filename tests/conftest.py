"""Shared test settings and fixtures.

Every test runs offline (``HF_HUB_OFFLINE=1``) with one torch thread. The fixtures build tiny
randomly initialised models that share the bundled tokenizer, saved with ``save_pretrained``:

- ``tiny_gpt2_dir``: a 2-layer GPT-2 (32 dims);
- ``tiny_llama_dir``: a 2-layer Llama (32 dims, grouped-query attention).

Both are session-scoped and take well under a second to build.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TEXTGEN_RL_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

#: Root of the repository (the folder holding ``text_envs`` and ``agents``).
REPO_ROOT: Path = Path(__file__).resolve().parent.parent
#: The bundled tokenizer and model.
BUNDLED_DIR: Path = REPO_ROOT / "text_envs" / "assets" / "tiny-lm"


def _save_random_model(config, directory: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_DIR)
    config.vocab_size = len(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root of the repository."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a random 2-layer GPT-2 with the bundled tokenizer (``save_pretrained`` layout)."""
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128)
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a random 2-layer Llama with the bundled tokenizer (``save_pretrained`` layout)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-llama"))


def _repository_files() -> set[str] | None:
    """Untracked and ignored paths under the repository (None outside a git checkout)."""
    import subprocess

    try:
        listing = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in listing.splitlines() if line[:2] in ("??", "!!")}
    tool_caches = ("__pycache__", ".pytest_cache", ".egg-info", ".hypothesis")
    return {p for p in paths if not any(part in p for part in tool_caches)}


@pytest.fixture(scope="session", autouse=True)
def tests_write_only_under_temporary_folders():
    """Fails the session if a test left a file inside the repository (tests write under tmp_path only)."""
    before = _repository_files()
    yield
    after = _repository_files()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"tests wrote inside the repository: {new[:10]}"



@pytest.fixture(scope="session", autouse=True)
def sb3_default_log_folder(tmp_path_factory: pytest.TempPathFactory):
    """SB3's ``learn()`` without a logger makes an (empty) ``$TMPDIR/SB3-<timestamp>`` folder per call; point it
    into pytest's temporary folders (``SB3_LOGDIR``) so that a test session leaves no folders behind."""
    saved = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3-logs"))
    yield
    if saved is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = saved
