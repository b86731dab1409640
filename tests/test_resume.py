"""Crash safety: real ``textgen-rl train`` / ``compare`` subprocesses are SIGKILLed at random moments and during
saves, resumed, and must end exactly where an uninterrupted run ends (scripts/kill_resume_trials.py)."""

from __future__ import annotations

import random

import pytest

from scripts.kill_resume_trials import (
    TRAIN_ARGS,
    compare_reference,
    compare_trial,
    finish,
    run_fingerprint,
    train_trial,
)


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_gpt2_dir):
    root = tmp_path_factory.mktemp("references")
    cache = {}

    def get(algo: str) -> dict:
        if algo not in cache:
            finish(["train", "--algo", algo, "--model", str(tiny_gpt2_dir), *TRAIN_ARGS, "--out", str(root / algo)])
            cache[algo] = run_fingerprint(root / algo)
        return cache[algo]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("algo, kind, seed", [
    # scripts/kill_resume_trials.py runs every kind for every algorithm (the README's reliability table)
    ("token-ppo", "final", 1),       # killed while the final model.zip is written
    ("grpo", "random", 3),           # at a random moment, incomplete prompt groups carried across the kill
    ("ppo", "checkpoint", 4),        # stock SB3 PPO, killed while a checkpoint replaces the previous one
])
def test_killed_run_resumes_to_the_uninterrupted_result(algo, kind, seed, references, tmp_path, tiny_gpt2_dir):
    outcome = train_trial(algo, tmp_path / "run", kind, random.Random(seed), references(algo), str(tiny_gpt2_dir))
    assert outcome.startswith("pass"), outcome
    if kind != "random":  # the kill during a save must really have happened
        assert "(killed" in outcome, outcome


@pytest.mark.slow
def test_killed_compare_resumes_its_runs_mid_way(tmp_path, tiny_gpt2_dir):
    reference = compare_reference(tmp_path / "reference", str(tiny_gpt2_dir))
    outcome = compare_trial(tmp_path / "killed", random.Random(7), reference, str(tiny_gpt2_dir))
    assert outcome == "pass", outcome
