"""Every Python block of the README runs as printed, in a fresh interpreter, in a scratch folder.

The only thing prepared beforehand is what the README itself says a block needs: ``rm/``, a reward-model
folder as ``textgen-rl train-rm`` writes it (here a small randomly initialised one: the block only
loads and calls it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return FENCE.findall((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 2


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config

    from text_envs.models import BUNDLED_MODEL_DIR

    folder = tmp_path_factory.mktemp("readme")
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, scratch):
    code = python_blocks()[index]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=scratch,
                            timeout=300)
    assert result.returncode == 0, f"README block {index} failed:\n{code}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    print(f"README block {index}: {time.monotonic() - started:.1f} s")
