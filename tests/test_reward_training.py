"""Reward-model training (``train-rm``) and the ``learned`` reward.

The main test is synthetic: ~300 preference pairs of varied texts, labelled by a hidden rule
(VADER sentiment of the completion, through ``make_reward("sentiment")``), train a MiniLM reward
model and require >= 0.85 pairwise accuracy on the held-out pairs.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import text_envs.rewards.learned  # noqa: F401  (registers "learned" even before the package imports it)
from agents.rlhf.data import write_feedback
from agents.rlhf.reward_training import (
    RewardTrainingConfig,
    bradley_terry_loss,
    pairwise_accuracy,
    pearson,
    rating_mse_loss,
    resolve_base,
    split_records,
    standardize,
    train_reward_model,
)
from text_envs.errors import ConfigError, FeedbackFormatError
from text_envs.rewards import make_reward
from text_envs.rewards.learned import LearnedReward, parse_reward_spec, rm_input_text
from text_envs.tasks import get_task

REPO_ROOT = Path(__file__).resolve().parent.parent

POSITIVE = ["wonderful", "great", "lovely", "happy", "excellent", "delightful", "beautiful", "amazing", "good",
            "joyful", "pleasant", "brilliant", "kind", "fantastic", "cheerful"]  # fmt: skip
NEGATIVE = ["terrible", "awful", "sad", "horrible", "ugly", "miserable", "bad", "dreadful", "angry", "painful",
            "nasty", "disgusting", "boring", "cruel", "hateful"]  # fmt: skip
NEUTRAL = ["the", "a", "river", "table", "morning", "window", "city", "walked", "said", "green", "paper", "train",
           "after", "house", "with", "ten", "road", "chair", "letter", "today"]  # fmt: skip


def random_completion(rng: random.Random) -> str:
    """4-8 neutral words with 0-2 sentiment words (positive or negative) inserted at random places."""
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 8))]
    for _ in range(rng.randint(0, 2)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice([POSITIVE, NEGATIVE])))
    return " " + " ".join(words) + "."


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs (task prompts + random completions) labelled by VADER: chosen = more positive."""
    rng = random.Random(seed)
    prompts = [example.prompt for example in get_task("sentiment").train]
    sentiment = make_reward("sentiment")
    rows: list[dict] = []
    while len(rows) < n:
        prompt, a, b = rng.choice(prompts), random_completion(rng), random_completion(rng)
        score_a, score_b = sentiment([prompt, prompt], [a, b])
        if abs(score_a - score_b) < 0.05:  # no clear preference under the hidden rule
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": f"s{len(rows)}"})
    return rows


def synthetic_ratings(n: int, seed: int = 1) -> list[dict]:
    """``n`` ratings 1..5: the VADER compound of the completion mapped linearly and rounded."""
    rng = random.Random(seed)
    prompts = [example.prompt for example in get_task("sentiment").train]
    sentiment = make_reward("sentiment")
    rows = []
    for _ in range(n):
        prompt, completion = rng.choice(prompts), random_completion(rng)
        compound = float(sentiment([prompt], [completion])[0])
        rows.append({"prompt": prompt, "completion": completion, "score": 1 + round(2 * (compound + 1))})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    write_feedback(path, rows)
    return path


@pytest.fixture(scope="module")
def minilm_rm(tmp_path_factory: pytest.TempPathFactory):
    """A MiniLM reward model trained on 300 synthetic VADER-labelled pairs (shared by several tests)."""
    root = tmp_path_factory.mktemp("rm")
    data = write_jsonl(root / "pairs.jsonl", synthetic_pairs(300))
    config = RewardTrainingConfig(
        data=str(data), out=str(root / "rm"), base="minilm", epochs=3, lr=2e-4, batch_size=16, max_length=32,
        val_fraction=0.2, seed=0, progress=False,
    )  # fmt: skip
    lines: list[str] = []
    result = train_reward_model(config, log=lines.append)
    return result, config, lines


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    """A small mixed file: 24 pairs, a ranking and 6 ratings (for fast runs with the tiny base)."""
    rows = synthetic_pairs(24, seed=5)
    rows.append({"prompt": "Rank:", "completions": [" lovely day.", " a day.", " awful day."]})
    rows += synthetic_ratings(6, seed=6)
    return write_jsonl(tmp_path / "small.jsonl", rows)


# --------------------------------------------------------------------------- pure functions


def test_bradley_terry_loss_hand_computed() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2  # -log sigmoid(1), -log sigmoid(0)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # margin: -log sigmoid(2 - 1 - 1) = log 2
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=1.0).item() == pytest.approx(math.log(2.0))
    # numerically stable for large differences
    assert bradley_terry_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-30)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([100.0])).item() == pytest.approx(100.0)
    # gradient wrt r_chosen at equal rewards: -(1 - sigmoid(0)) / B = -0.5 / 1
    r = torch.tensor([0.5], requires_grad=True)
    bradley_terry_loss(r, torch.tensor([0.5])).backward()
    assert r.grad.item() == pytest.approx(-0.5)


def test_rating_loss_standardize_metrics_hand_computed() -> None:
    assert rating_mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx(2.5)
    z, mean, std = standardize([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(math.sqrt(2 / 3))
    assert z == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert standardize([4.0, 4.0]) == ([0.0, 0.0], 4.0, 1.0)
    assert pairwise_accuracy([1.0, 2.0, 0.0, 5.0], [0.0, 3.0, 0.0, 1.0]) == 0.5  # a tie counts as wrong
    assert pairwise_accuracy([], []) is None
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1], [1, 2]) is None and pearson([1], [1]) is None


def test_split_records_is_deterministic() -> None:
    records = list(range(10))
    train, val = split_records(records, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == records
    assert split_records(records, 0.2, seed=0) == (train, val)
    assert split_records(records, 0.2, seed=1) != (train, val)
    assert split_records(records, 0.0, seed=0) == (records, [])
    assert split_records([1, 2], 0.01, seed=0)[1] != []  # at least one validation record
    assert split_records([1, 2], 0.9, seed=0)[0] != []  # never all of them
    assert split_records([1], 0.5, seed=0) == ([1], [])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0), ("epochs", 1.5), ("batch_size", True), ("lr", 0.0), ("lr", float("nan")), ("margin", -1.0),
        ("val_fraction", 1.0), ("val_fraction", -0.1), ("max_length", 0), ("seed", -1), ("data", ""), ("base", " "),
        ("progress", "yes"),
    ],
)  # fmt: skip
def test_config_validation_names_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RewardTrainingConfig(**{"data": "d.jsonl", "out": "rm", field: value})
    assert str(info.value).startswith(f"{field}={value!r}")


def test_every_config_field_has_help() -> None:
    import dataclasses

    for f in dataclasses.fields(RewardTrainingConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


def test_parse_reward_spec() -> None:
    assert parse_reward_spec("learned:rm/") == ("learned", {"path": "rm/"})
    assert parse_reward_spec("learned:C:/models/a=b") == ("learned", {"path": "C:/models/a=b"})
    assert parse_reward_spec("sentiment") == ("sentiment", {})
    assert parse_reward_spec("length:target=20,mode=words") == ("length", {"target": 20, "mode": "words"})
    for bad in ("", "learned:", ":x", "length:oops"):
        with pytest.raises(ConfigError):
            parse_reward_spec(bad)


def test_resolve_base_aliases() -> None:
    assert Path(resolve_base("minilm"), "config.json").is_file()
    assert Path(resolve_base("tiny"), "config.json").is_file()
    assert resolve_base("org/some-model") == "org/some-model"


# --------------------------------------------------------------------------- synthetic preference training


@pytest.mark.slow
def test_learns_hidden_preference_rule(minilm_rm) -> None:
    result, config, lines = minilm_rm
    assert len(result.history) == config.epochs and len(lines) == config.epochs
    assert result.metrics["val_pairs"] == 60
    assert result.metrics["val_pairwise_accuracy"] >= 0.85, result.history
    assert "val_pairwise_accuracy" in lines[-1]


def test_metadata_file(minilm_rm) -> None:
    result, config, _ = minilm_rm
    out = Path(config.out)
    meta = json.loads((out / "reward_model.json").read_text(encoding="utf-8"))
    assert meta["format"] == "textgen-rl-reward-model" and meta["base"] == "minilm"
    assert meta["architecture"] == "BertForSequenceClassification"
    import hashlib

    assert meta["data_sha256"] == hashlib.sha256(Path(config.data).read_bytes()).hexdigest()
    assert meta["n_examples"]["preferences"] == 300
    assert meta["n_examples"]["train_pairs"] == 240 and meta["n_examples"]["val_pairs"] == 60
    assert meta["metrics"] == result.metrics and len(meta["history"]) == config.epochs
    assert meta["config"]["lr"] == config.lr and meta["config"]["max_length"] == 32
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    # nothing left behind next to the folder
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.jsonl", "rm"]


def test_learned_reward_scores_batched(minilm_rm) -> None:
    _, config, _ = minilm_rm
    reward = make_reward("learned", path=config.out, device="cpu", batch_size=2)
    assert reward.name == "learned"
    prompts = ["The day was"] * 5
    completions = [" wonderful and happy.", " terrible and sad.", " a table.", " lovely.", " awful, cruel"]
    inner = reward.inner
    calls = []
    original = inner.model.forward
    inner.model.forward = lambda *a, **k: calls.append(len(k.get("input_ids", a[0] if a else []))) or original(*a, **k)
    scores = reward(prompts, completions)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64 and scores.shape == (5,)
    assert calls == [2, 2, 1]  # one forward per chunk of batch_size
    inner.model.forward = original
    # the same scores when scored one by one or all at once (chunking keeps the order)
    single = LearnedReward(config.out, device="cpu", batch_size=32)(prompts, completions)
    np.testing.assert_allclose(scores, single, rtol=1e-4, atol=1e-5)
    assert scores[0] > scores[1] and scores[3] > scores[4]  # it learned the rule
    assert reward([], []).shape == (0,)
    assert make_reward("learned", path=config.out, max_length=32).inner.max_length == 32
    assert LearnedReward(config.out).max_length == 32  # the training value from the metadata
    assert rm_input_text("The day was", "good") == "The day was good"


def test_learned_reward_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'.*missing-rm' does not exist.*textgen-rl train-rm"):
        make_reward("learned", path=str(tmp_path / "missing-rm"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder.*textgen-rl train-rm"):
        make_reward("learned", path=str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json.*textgen-rl train-rm"):
        make_reward("learned", path=str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot load the reward model.*textgen-rl train-rm"):
        make_reward("learned", path=str(broken))
    with pytest.raises(ConfigError, match="path"):
        make_reward("learned")


def test_learned_reward_rejects_multi_output_model(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2_dir, num_labels=3)
    model.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(tmp_path / "clf")
    with pytest.raises(ConfigError, match="3 outputs.*num_labels=1"):
        make_reward("learned", path=str(tmp_path / "clf"))


# --------------------------------------------------------------------------- ratings


@pytest.mark.slow
def test_ratings_mse_path_learns(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ratings.jsonl", synthetic_ratings(160))
    config = RewardTrainingConfig(
        data=str(data), out=str(tmp_path / "rm"), base="minilm", epochs=3, lr=2e-4, batch_size=16, max_length=32,
        progress=False,
    )  # fmt: skip
    result = train_reward_model(config)
    assert result.metrics["val_ratings"] == 32 and "val_pairwise_accuracy" not in result.metrics
    assert result.metrics["val_rating_pearson"] > 0.6, result.history
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    scores = [r["score"] for r in synthetic_ratings(160)]
    assert meta["rating_standardization"]["mean"] == pytest.approx(np.mean(scores), abs=0.3)


# --------------------------------------------------------------------------- tiny base, atomic save


def test_tiny_base_mixed_data_and_atomic_replace(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "rm"
    config = RewardTrainingConfig(data=str(small_data), out=str(out), base="tiny", epochs=1, progress=False)
    first = train_reward_model(config)
    assert first.metadata["architecture"] == "GPT2ForSequenceClassification"
    assert first.metadata["n_examples"]["rankings"] == 1 and first.metadata["n_examples"]["ratings"] == 6
    assert first.metrics["val_pairs"] > 0 and first.metrics["val_ratings"] > 0
    reward = make_reward("learned", path=str(out))
    assert reward(["a", "b"], [" good", " bad"]).shape == (2,)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(tmp: Path) -> None:  # the new model is fully written to the temp folder, then the run dies
        assert (tmp / "reward_model.json").is_file()
        raise RuntimeError("simulated crash before the swap")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_reward_model(RewardTrainingConfig(data=str(small_data), out=str(out), base="tiny", epochs=1, seed=7, progress=False), _before_save=crash)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm", "small.jsonl"]  # no temp folder left

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(FeedbackFormatError, match=r"bad.jsonl:2: missing key \"rejected\""):
        train_reward_model(RewardTrainingConfig(data=str(bad), out=str(out), base="tiny", progress=False))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot

    # a successful run replaces the folder as a whole
    second = train_reward_model(RewardTrainingConfig(data=str(small_data), out=str(out), base="tiny", epochs=1, seed=3, progress=False))
    assert second.metadata["config"]["seed"] == 3
    assert json.loads((out / "reward_model.json").read_text())["config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "rm", "small.jsonl"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path, small_data: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(ConfigError, match="not a reward model.*refusing"):
        train_reward_model(RewardTrainingConfig(data=str(small_data), out=str(precious), base="tiny", progress=False))
    assert (precious / "thesis.tex").read_text() == "do not delete"
    with pytest.raises(ConfigError, match="no training examples"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        train_reward_model(RewardTrainingConfig(data=str(empty), out=str(tmp_path / "rm"), base="tiny", progress=False))
    assert not (tmp_path / "rm").exists()


# --------------------------------------------------------------------------- command line


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_train_rm_command(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "rm"
    result = _run_cli("train-rm", "--data", str(small_data), "--base", "tiny", "--out", str(out), "--epochs", "1",
                      "--batch-size", "8", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"saved reward model to {out}" in result.stdout and f"learned:{out}" in result.stdout
    assert "epoch=1" in result.stderr
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["config"]["batch_size"] == 8 and meta["config"]["progress"] is False


@pytest.mark.slow
def test_train_rm_killed_during_save_keeps_the_old_model_and_cleans_up(tmp_path: Path, small_data: Path) -> None:
    """A real SIGKILL while the new model is being written: the old one stays, the next run removes the
    leftover temporary folder."""
    import signal
    import time

    out = tmp_path / "rm"
    args = ("train-rm", "--data", str(small_data), "--base", "tiny", "--out", str(out), "--epochs", "1",
            "--no-progress")
    assert _run_cli(*args).returncode == 0
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TEXTGEN_RL_THREADS": "1",
           "TEXTGEN_RL_SAVE_PAUSE_S": "30"}
    process = subprocess.Popen([sys.executable, "-m", "agents.cli", *args, "--seed", "5"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".rm.tmp-*/model.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(tmp_path.glob(".rm.tmp-*")), "killed during the save: its temporary folder is left"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot  # the old model, intact
    assert _run_cli(*args, "--seed", "6").returncode == 0
    assert not list(tmp_path.glob(".rm*tmp-*")), "the next run removed the leftover"
    assert json.loads((out / "reward_model.json").read_text())["config"]["seed"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "epochs=0: expected an integer >= 1"),
        (["--val-fraction", "1.5"], "val_fraction=1.5"),
        (["--data", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["--data", "{tmp}/bad.jsonl"], "bad.jsonl:1: not valid JSON"),
        (["--base", "{tmp}"], "no config.json"),
    ],
)
def test_train_rm_command_bad_input(tmp_path: Path, small_data: Path, capsys, args: list[str], message: str) -> None:
    """In-process (fast): exit code 2 and a one-line error, nothing written."""
    from agents.cli import main

    (tmp_path / "bad.jsonl").write_text("{oops\n")
    options = {"--data": str(small_data), "--out": str(tmp_path / "rm"), "--base": "tiny", "--no-progress": None}
    for key, value in zip(args[::2], args[1::2]):
        options[key] = value.format(tmp=tmp_path)
    argv = ["train-rm"] + [x for kv in options.items() for x in kv if x is not None]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textgen-rl train-rm: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "rm").exists()


def test_train_rm_command_bad_input_subprocess(tmp_path: Path) -> None:
    result = _run_cli("train-rm", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "rm"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textgen-rl train-rm: error: feedback file not found"), result.stderr
