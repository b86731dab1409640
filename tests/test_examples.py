"""The examples run (small budgets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, args, expected", [
    ("env_quickstart.py", [], "batched prompts"),
    ("train_token_ppo.py", ["256"], "held-out score"),
    ("compare_sb3_algorithms.py", ["64"], "MaskablePPO: trained"),
])
@pytest.mark.slow
def test_example_runs(script, args, expected):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True,
                            text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
