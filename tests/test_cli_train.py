"""``textgen-rl train`` / ``eval`` through a real subprocess, small budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: int = 300, cwd: Path = REPO, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


TRAIN_ARGS = ("--timesteps", "192", "--num-envs", "4", "--eval-n", "6", "--max-new-tokens", "6")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_gpt2_dir):
    out = tmp_path_factory.mktemp("run") / "sentiment"
    result = cli("train", "--model", str(tiny_gpt2_dir), *TRAIN_ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


def test_train_writes_the_run_folder(trained_run):
    out, result = trained_run
    for name in ("model.zip", "progress.csv", "reward_curve.png", "eval.json", "hf/config.json",
                 "hf/textgen_rl.json"):
        assert (out / name).exists(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events"
    assert not [p for p in out.rglob(".*tmp*")], "no temporary files left"
    assert "before training" in result.stdout and "after training" in result.stdout
    summary = json.loads((out / "eval.json").read_text())
    assert summary["before"]["n"] == 6 and "score_mean" in summary["after"]
    assert "objective/score" in (out / "progress.csv").read_text().splitlines()[0]


def test_eval_json_counts_the_tokens_actually_generated(trained_run):
    out, result = trained_run
    summary = json.loads((out / "eval.json").read_text())
    assert summary["budget"] == 192
    # a rollout finishes its episodes: at least the budget, a whole number of steps of the 4 env slots
    assert summary["timesteps"] >= 192 and summary["timesteps"] % 4 == 0
    assert summary["tokens_per_second"] == pytest.approx(summary["timesteps"] / summary["seconds"], rel=0.05)
    assert f"trained {summary['timesteps']} generated tokens (budget 192)" in result.stdout
    assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr


@pytest.mark.slow
def test_eval_reproduces_the_after_figures_of_train(trained_run, tiny_gpt2_dir):
    """train and eval score the same held-out prompts with the same sampling streams by default."""
    out, _ = trained_run
    summary = json.loads((out / "eval.json").read_text())
    after = cli("eval", "--model", str(out / "hf"), "--n", "6", "--max-new-tokens", "6", "--json")
    before = cli("eval", "--model", str(tiny_gpt2_dir), "--n", "6", "--max-new-tokens", "6", "--json")
    assert after.returncode == 0 and before.returncode == 0, after.stderr[-2000:] + before.stderr[-2000:]
    for result, key in ((after, "after"), (before, "before")):
        payload = json.loads(result.stdout.strip().splitlines()[-1])
        assert payload["n"] == 6
        for metric in ("score_mean", "kl_mean", "distinct_2", "length_mean"):
            assert payload[metric] == pytest.approx(summary[key][metric], abs=1e-4), (key, metric)


@pytest.mark.slow
def test_eval_json_on_exported_model(trained_run):
    out, _ = trained_run
    result = cli("eval", "--model", str(out / "hf"), "--task", "sentiment", "--n", "4", "--max-new-tokens", "5",
                 "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["n"] == 4 and {"score_mean", "score_se", "kl_mean", "distinct_1", "samples"} <= set(payload)


CHAT_ARGS = ("--env", "TextChat-v0", "--task", "guess-number", "--max-turns", "2", "--max-turn-tokens", "4",
             "--max-new-tokens", "40")


@pytest.mark.slow
def test_train_and_eval_agree_on_a_multi_turn_task(tmp_path, tiny_gpt2_dir):
    """`train --env TextChat-v0` runs end to end, and `eval --env TextChat-v0` reproduces its after figures."""
    out = tmp_path / "chat"
    result = cli("train", "--model", str(tiny_gpt2_dir), *CHAT_ARGS, "--timesteps", "64", "--num-envs", "4",
                 "--eval-n", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "eval.json").read_text())
    evaluated = cli("eval", "--model", str(out / "hf"), *CHAT_ARGS, "--n", "4", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    payload = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert payload["n"] == 4 and summary["after"]["n"] == 4
    for metric in ("score_mean", "kl_mean", "length_mean"):
        assert payload[metric] == pytest.approx(summary["after"][metric], abs=1e-4), metric


@pytest.fixture(scope="module")
def broken_model_dirs(tmp_path_factory, tiny_gpt2_dir):
    """A folder whose tokenizer (4,096 tokens) does not fit its model (100 rows), and a pickle-only checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    root = tmp_path_factory.mktemp("broken")
    small = root / "small-vocab"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=100, n_layer=1, n_embd=16, n_head=2)).save_pretrained(small)
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(small)
    pickled = root / "pickle-only"
    pickled.mkdir()
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.config.save_pretrained(pickled)
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(pickled)
    torch.save({"state": model.state_dict(), "extra": object()}, pickled / "pytorch_model.bin")
    return {"small-vocab": small, "pickle-only": pickled}


BAD_INPUTS = [
    (["train", "--task", "poetry"], "--task poetry"),
    (["train", "--algo", "dqn"], "--algo dqn"),
    (["train", "--timesteps", "0"], "--timesteps"),
    (["train", "--learning-rate", "-1"], "argument --learning-rate: expected a finite number > 0, got '-1'"),
    (["train", "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["train", "--threads", "0"], "argument --threads"),
    (["train", "--kl-coef", "nan"], "argument --kl-coef"),
    (["train", "--kl-target", "0"], "argument --kl-target"),
    (["train", "--device", "xla"], "--device xla"),
    (["train", "--reward-model", "nosuch"], "--reward-model nosuch"),
    (["train", "--reward-model", "learned:no-such-folder"], "no-such-folder"),
    (["train", "--model", "no-such-model-xyz", "--timesteps", "8"], "no-such-model-xyz"),
    (["train", "--out", "/proc/textgen-rl-cannot-write"], "not writable"),
    (["train", "--model", "{small-vocab}"], "4096 tokens but the model's vocabulary"),
    (["train", "--model", "{pickle-only}"], "pickle checkpoint"),
    (["eval", "--n", "0"], "--n"),
    (["eval", "--max-turns", "2"], "--max-turns and --max-turn-tokens apply to --env TextChat-v0"),
    (["eval", "--env", "TextChat-v0", "--task", "no-such-game"], "--task no-such-game"),
    (["eval", "--env", "TextChat-v0", "--task", "guess-number", "--reward-model", "length"], "--reward-model"),
    (["eval", "--reference", "no-such-model-xyz"], "--reference no-such-model-xyz"),
    (["eval", "--model", "{small-vocab}"], "4096 tokens but the model's vocabulary"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(args, message, capsys, monkeypatch, tmp_path,
                                                          broken_model_dirs):
    from agents.cli import main

    monkeypatch.chdir(tmp_path)
    args = [a.format(**broken_model_dirs) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert list(tmp_path.iterdir()) == [], "a rejected command created files"


def test_bad_input_exit_code_through_the_console_script(tmp_path):
    result = cli("train", "--task", "poetry", timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "textgen-rl train: error: --task poetry: unknown task 'poetry'; registered tasks: sentiment, concepts, "
        "toxicity, arithmetic, length, define"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("offline", ["1", "0"])
def test_unknown_hub_id_fails_fast(offline, tmp_path):
    """Offline, or with no route to the hub (this machine), an unknown id fails at once: no HTTP retries."""
    started = time.monotonic()
    result = cli("eval", "--model", "no-such-org/no-such-model", timeout=120, cwd=tmp_path, HF_HUB_OFFLINE=offline,
                 TRANSFORMERS_OFFLINE=offline)
    elapsed = time.monotonic() - started
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no-such-org/no-such-model" in result.stderr
    assert elapsed < 3, f"took {elapsed:.1f} s (interpreter start included)"


def test_help_shows_defaults():
    for command, expected in (("train", ["(default: 32768)", "(default: token-ppo)", "(default: 1234)",
                                         "(default: 0)", "(default: tiny)"]),
                              ("eval", ["(default: 64)", "(default: 1234)", "(default: sentiment)"]),
                              ("compare", ["(default: 4096)", "(default: 3)"])):
        result = cli(command, "--help", timeout=60)
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        for fragment in expected:
            assert fragment in text, (command, fragment)
