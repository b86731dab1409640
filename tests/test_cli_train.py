"""``textgen-rl train`` / ``eval`` through a real subprocess, small budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_gpt2_dir):
    out = tmp_path_factory.mktemp("run") / "sentiment"
    result = cli("train", "--model", str(tiny_gpt2_dir), "--timesteps", "192", "--num-envs", "4", "--eval-n", "4",
                 "--max-new-tokens", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


def test_train_writes_the_run_folder(trained_run):
    out, result = trained_run
    for name in ("model.zip", "progress.csv", "reward_curve.png", "eval.json", "hf/config.json",
                 "hf/textgen_rl.json"):
        assert (out / name).exists(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events"
    assert "before training" in result.stdout and "after training" in result.stdout
    summary = json.loads((out / "eval.json").read_text())
    assert summary["before"]["n"] == 4 and "score_mean" in summary["after"]
    assert "objective/score" in (out / "progress.csv").read_text().splitlines()[0]


def test_eval_json_on_exported_model(trained_run):
    out, _ = trained_run
    result = cli("eval", "--model", str(out / "hf"), "--task", "sentiment", "--n", "4", "--max-new-tokens", "5",
                 "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["n"] == 4 and {"score_mean", "kl_mean", "distinct_1", "samples"} <= set(payload)


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "poetry"], "poetry"),
    (["train", "--algo", "dqn"], "dqn"),
    (["train", "--timesteps", "0"], "--timesteps"),
    (["train", "--model", "no-such-model-xyz", "--timesteps", "8"], "no-such-model-xyz"),
    (["train", "--out", "/proc/textgen-rl-cannot-write"], "not writable"),
    (["eval", "--n", "0"], "--n"),
])
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    from agents.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert len(error_lines) == 1 and message in error_lines[0], err


def test_bad_input_exit_code_through_the_console_script():
    result = cli("train", "--task", "poetry", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("textgen-rl train: error: unknown task")
