"""``agents.compare`` / ``textgen-rl compare``: registry, files, resume, errors, bootstrap CI."""

from __future__ import annotations

import argparse
import csv

import pytest

import agents
import agents.compare as cmp
from text_envs.errors import ConfigError
FAST = {"n_steps": 8, "batch_size": 8}


def test_package_exports_compare():
    assert agents.compare_algorithms is cmp.compare and callable(agents.compare_algorithms)


def test_bootstrap_ci_on_known_data():
    assert cmp.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert cmp.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert cmp.bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    mean, low, high = cmp.bootstrap_ci(list(range(10)), confidence=0.95)
    assert mean == 4.5 and 2.5 < low < 4.5 < high < 6.5
    assert all(v != v for v in cmp.bootstrap_ci([float("nan")]))


def test_unknown_algorithm_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'; known: token-ppo, ppo"):
        cmp.make_algorithm("nope", env_kwargs={}, num_envs=4, model="tiny")
    with pytest.raises(ConfigError, match="grpo"):
        cmp.compare(algos="token-ppo,nope", out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="multiple of 4"):
        cmp.compare(algos=["rloo"], num_envs=6, out=tmp_path, progress=False)


def test_cli_reports_unknown_algorithm_in_one_line(tmp_path, capsys):
    from agents.cli import COMMAND_MODULES, main
    from agents.cli import compare as cli_compare

    if "compare" in COMMAND_MODULES:
        assert main(["compare", "--algos", "ppo,nope", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "unknown algorithm 'nope'" in err
    else:
        parser = argparse.ArgumentParser()
        cli_compare.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["compare", "--algos", "ppo,nope", "--out", str(tmp_path)])
        with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
            args.func(args)


def test_every_registered_algorithm_builds(tiny_gpt2_dir):
    env_kwargs = {"model": str(tiny_gpt2_dir), "task": "sentiment", "kl_coef": 0.05}
    for name, spec in cmp.ALGORITHMS.items():
        fast = {key: value for key, value in FAST.items() if key in spec.defaults}
        agent = cmp.make_algorithm(name, env_kwargs=env_kwargs, num_envs=4, model=str(tiny_gpt2_dir), seed=0,
                                   device="cpu", overrides=fast)
        assert agent.n_envs == 4, name
        if spec.maskable:
            assert agent.env.mask_top_k > 0
        if cmp.group_size_of(name) > 1:
            assert agent.env.reset_options["group_size"] == cmp.group_size_of(name) == 4
        agent.env.close()


def test_compare_writes_files_and_resumes(tiny_gpt2_dir, tmp_path, monkeypatch):
    kwargs = dict(tasks=["sentiment"], algos="token-ppo,grpo", seeds=2, timesteps=64, out=tmp_path / "cmp",
                  model=str(tiny_gpt2_dir), num_envs=4, eval_n=4, device="cpu",
                  hyperparams={"token-ppo": FAST, "grpo": FAST}, progress=False)
    result = cmp.compare(**kwargs)
    out = tmp_path / "cmp"
    assert result.results_csv == out / "results.csv" and (out / "curves.png").stat().st_size > 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["algo"], r["seed"]) for r in rows] == [("token-ppo", "0"), ("token-ppo", "1"), ("grpo", "0"),
                                                      ("grpo", "1")]
    assert all(int(r["timesteps"]) >= 64 and float(r["tokens_per_s"]) > 0 for r in rows)
    for run in result.runs:
        assert run["curve"][0]["tokens"] == 0 and run["curve"][-1]["tokens"] == run["timesteps"]
    summary = (out / "summary.md").read_text()
    assert "| sentiment | token-ppo | 2 |" in summary and summary.count("**") == 2
    assert sum(r["best"] for r in result.summary) == 1

    assert result.counts == {"trained": 4, "resumed": 0, "reused": 0}
    assert "4 trained, 0 resumed from a checkpoint, 0 reused" in summary

    # a second call reruns nothing
    calls = []
    real_run_one = cmp.run_one
    monkeypatch.setattr(cmp, "run_one", lambda *a, **k: calls.append(a) or real_run_one(*a, **k))
    again = cmp.compare(**kwargs)
    assert calls == [] and [r["score_mean"] for r in again.runs] == [r["score_mean"] for r in result.runs]
    assert again.counts == {"trained": 0, "resumed": 0, "reused": 4}

    # an interrupted run (no result JSON, a stale temp file) is redone, and only that one
    grpo_1 = next((out / "runs").glob("sentiment__grpo__seed1__*.json"))
    grpo_1.unlink()
    (out / "runs" / f".{grpo_1.name}.tmp-999").write_text("{partial")
    cmp.compare(**kwargs)
    assert [(a[1], a[2]) for a in calls] == [("grpo", 1)]
    assert grpo_1.is_file()


def test_compare_cache_is_keyed_by_the_whole_configuration(tiny_gpt2_dir, tmp_path, monkeypatch):
    """Changed settings rerun the runs (never stale results under new labels); unchanged ones are reused."""
    kwargs = dict(tasks=["sentiment"], algos="token-ppo", seeds=1, timesteps=64, out=tmp_path / "cmp",
                  model=str(tiny_gpt2_dir), num_envs=4, eval_n=4, device="cpu", hyperparams={"token-ppo": FAST},
                  progress=False, plot=False)
    first = cmp.compare(**kwargs)
    for change in ({"timesteps": 96}, {"kl_coef": 0.1}, {"eval_n": 6},
                   {"hyperparams": {"token-ppo": {**FAST, "learning_rate": 3e-4}}}):
        result = cmp.compare(**{**kwargs, **change})
        assert result.counts["trained"] == 1, change
        assert result.runs[0]["config"] != first.runs[0]["config"]
    assert cmp.compare(**kwargs).counts == {"trained": 0, "resumed": 0, "reused": 1}
    assert len(list((tmp_path / "cmp" / "runs").glob("*.json"))) == 5
