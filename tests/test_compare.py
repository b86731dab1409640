"""``agents.compare`` / ``textgen-rl compare``: registry, files, resume, errors, rliable statistics."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from importlib.metadata import version

import pytest

import agents
import agents.compare as cmp
from agents.cli import compare as cli_compare
from text_envs import __version__
from text_envs.errors import ConfigError, MissingDependencyError

FAST = {"n_steps": 8, "batch_size": 8}


def test_package_exports_compare():
    assert agents.compare_algorithms is cmp.compare and callable(agents.compare_algorithms)


def synthetic_runs(scores: dict[tuple[str, str], list[float]], untrained: dict[str, float]) -> list[dict]:
    """Run records as compare writes them, with the given final scores per (task, algo), seed by seed."""
    runs = []
    for (task, algo), values in scores.items():
        for seed, value in enumerate(values):
            runs.append({"task": task, "algo": algo, "seed": seed, "score_mean": value,
                         "initial_score_mean": untrained[task], "kl_mean": 1.0, "tokens_per_s": 100.0,
                         "timesteps": 64, "curve": [{"tokens": 0, "score_mean": untrained[task]},
                                                    {"tokens": 64 + seed, "score_mean": value}]})
    return runs


def test_analysis_normalises_and_aggregates_by_hand():
    # task t: untrained 0; x ends at (1, 3) (mean 2, the best), y at (0, 1) -> normalised x (.5, 1.5), y (0, .5)
    # task u: untrained 1; nobody ends above 1 -> no scale: left out of the aggregates, kept for P(X > Y)
    runs = synthetic_runs({("t", "x"): [1.0, 3.0], ("t", "y"): [0.0, 1.0], ("u", "x"): [0.5, 0.5],
                           ("u", "y"): [1.0, 0.0]}, {"t": 0.0, "u": 1.0})
    analysis = cmp.analyze(runs, reps=500)
    assert analysis.tasks == ["t"] and analysis.excluded == ["u"]
    assert analysis.normalization["t"].source == "best mean: x" and analysis.normalization["t"].reference == 2.0
    assert analysis.normalized["x"].tolist() == [[0.5], [1.5]] and analysis.normalized["y"].tolist() == [[0.0], [0.5]]
    assert analysis.aggregate["x"]["mean"].point == pytest.approx(1.0)
    assert analysis.aggregate["y"]["optimality gap"].point == pytest.approx(1 - 0.25)
    # task t: x beats y in 1>0, 1=1 (1/2), 3>0, 3>1 -> 3.5/4; task u: .5 vs 1 and 0 -> 1/2 -> mean .6875
    assert analysis.improvement[("x", "y")].point == pytest.approx((0.875 + 0.5) / 2)
    rows = {(r["task"], r["algo"]): r for r in analysis.rows}
    assert rows[("t", "x")]["best"] and rows[("t", "x")]["normalized_mean"] == pytest.approx(1.0)
    assert rows[("t", "y")]["ci_low"] == 0.0 and rows[("t", "y")]["ci_high"] == 1.0  # resamples of (0, 1)
    assert math.isnan(rows[("u", "x")]["normalized_iqm"])
    summary = cmp.summary_markdown(analysis, 64)
    headings = [summary.index(h) for h in ("## Across tasks", "## Probability of improvement", "## Per task")]
    assert headings == sorted(headings) and "| x | 4 |" not in summary and "| x | 2 | 1.000 |" in summary
    assert "Left out (no algorithm's mean final score above the untrained model's, so no scale): u." in summary
    assert "| x | - | 0.69 [" in summary


def test_fixed_references_and_sweeps_without_any_scale():
    runs = synthetic_runs({("t", "x"): [0.0, 0.0], ("t", "y"): [-1.0, 0.0]}, {"t": 0.0})
    analysis = cmp.analyze(runs, reps=100)
    assert analysis.tasks == [] and analysis.aggregate == {} and analysis.taus is None
    assert "No task could be normalised" in cmp.summary_markdown(analysis, 64)
    fixed = cmp.analyze(runs, reps=100, references={"t": 4.0})
    assert fixed.normalization["t"].source == "fixed" and fixed.normalized["y"].tolist() == [[-0.25], [0.0]]


def test_cross_task_statistics_need_the_same_seeds_on_every_task():
    runs = synthetic_runs({("t", "x"): [1.0, 2.0], ("u", "x"): [1.0]}, {"t": 0.0, "u": 0.0})
    with pytest.raises(ConfigError, match="same seeds of 'x' on every task"):
        cmp.analyze(runs, reps=10)


def test_bad_statistics_settings_fail_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(cmp, "run_one", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ConfigError, match="reference score for task 'length', which is not in the sweep"):
        cmp.compare(algos="grpo", references={"length": 1.0}, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="reference score of task 'sentiment' must be a finite number, got nan"):
        cmp.compare(algos="grpo", references={"sentiment": float("nan")}, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="bootstrap reps must be a positive int, got 0"):
        cmp.compare(algos="grpo", bootstrap_reps=0, out=tmp_path, progress=False)
    monkeypatch.setitem(sys.modules, "rliable", None)
    with pytest.raises(MissingDependencyError, match="textgen-rl"):
        cmp.compare(algos="grpo", out=tmp_path, progress=False)


def test_cli_reference_argument():
    from agents.cli.compare import task_reference
    from agents.statistics import DEFAULT_REPS

    assert task_reference("sentiment=0.5") == ("sentiment", 0.5)
    for bad in ("sentiment", "=1", "sentiment=inf", "sentiment=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="TASK=SCORE"):
            task_reference(bad)
    parser = argparse.ArgumentParser()
    cli_compare.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", "--reference", "a=1", "--reference", "b=2"])
    assert args.reference == [("a", 1.0), ("b", 2.0)] and args.bootstrap_reps == DEFAULT_REPS


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_compare_records_configuration_versions_and_statistics(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "cmp"
    result = cmp.compare(tasks="sentiment", algos="grpo,dapo", seeds=2, timesteps=64, out=out,
                         model=str(tiny_gpt2_dir), num_envs=4, eval_n=4, device="cpu",
                         hyperparams={"grpo": FAST, "dapo": FAST}, progress=False, references={"sentiment": 5.0},
                         bootstrap_reps=200)
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(cmp.RESULT_COLUMNS)
    stems = {path.stem for path in (out / "runs").glob("*.json")}
    for row, run in zip(rows, result.runs):
        assert row["config_key"] in stems and row["config_key"].startswith(f"sentiment__{row['algo']}__seed")
        assert json.loads(row["hyperparams"]) == run["config"]["hyperparams"]
        assert (row["model"], row["num_envs"], row["eval_n"], row["kl_coef"], row["budget"]) == (
            str(tiny_gpt2_dir.resolve()), "4", "4", "0.05", "64")
        assert row["torch_version"] == version("torch") and row["gymnasium_version"] == version("gymnasium")
        assert row["transformers_version"] == version("transformers")
        assert row["stable_baselines3_version"] == version("stable-baselines3")
        assert row["numpy_version"] == version("numpy") and row["peft_version"] == version("peft")
        assert row["rliable_version"] == version("rliable") and row["ray_version"] == version("ray")
        assert row["text_envs_version"] == __version__
    assert json.loads(rows[-1]["hyperparams"])["loss_type"] == "dapo"
    summary = result.summary_markdown
    assert summary.index("## Across tasks") < summary.index("| P(row > column) | grpo | dapo |") < summary.index(
        "## Per task")
    assert "sentiment: " in summary and "(fixed)" in summary
    assert set(result.statistics.aggregate) == {"grpo", "dapo"}
    for figure in (result.curves_png, result.intervals_png, result.profiles_png):
        assert figure is not None and figure.stat().st_size > 0
    assert (result.intervals_png.name, result.profiles_png.name) == ("intervals.png", "profiles.png")


def test_unknown_task_names_both_kinds_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"'nope'.*sentiment.*guess-number.*textarena:<GameId>"):
        cmp.compare(tasks="sentiment,nope", algos="grpo", seeds=1, timesteps=8, out=tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()
    assert (cmp.task_env("sentiment"), cmp.task_env("guess-number")) == ("TextGen-v0", "TextChat-v0")


def test_every_registered_algorithm_builds_on_a_multi_turn_task(tiny_gpt2_dir):
    env_kwargs = {"model": str(tiny_gpt2_dir), "task": "guess-number", "kl_coef": 0.05, "max_episode_tokens": 96}
    for name, spec in cmp.ALGORITHMS.items():
        fast = {key: value for key, value in FAST.items() if key in spec.defaults}
        agent = cmp.make_algorithm(name, env_kwargs=env_kwargs, num_envs=4, model=str(tiny_gpt2_dir), seed=0,
                                   device="cpu", overrides=fast, env_id="TextChat-v0")
        assert agent.n_envs == 4 and agent.env.env.batch.dialogue is not None, name
        agent.env.close()


@pytest.mark.slow
def test_compare_mixes_single_and_multi_turn_tasks(tmp_path):
    """A multi-turn task (a responder) runs in TextChat-v0 beside a TextGen-v0 task, with the same statistics."""
    out = tmp_path / "cmp"
    result = cmp.compare(tasks="arithmetic,guess-number", algos="token-ppo,grpo", seeds=1, timesteps=64, out=out,
                         model="tiny", num_envs=4, eval_n=4, device="cpu",
                         hyperparams={"token-ppo": FAST, "grpo": FAST}, progress=False, plot=False,
                         bootstrap_reps=100)
    assert [(r["task"], r["env"], r["algo"]) for r in result.runs] == [
        ("arithmetic", "TextGen-v0", "token-ppo"), ("arithmetic", "TextGen-v0", "grpo"),
        ("guess-number", "TextChat-v0", "token-ppo"), ("guess-number", "TextChat-v0", "grpo")]
    for run in result.runs:
        assert run["timesteps"] >= 64 and len(run["curve"]) >= 2 and math.isfinite(run["score_mean"])
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [json.loads(r["env"]) for r in rows] == [
        {"id": "TextGen-v0", "kl_penalty": "deferred"}, {"id": "TextGen-v0", "kl_penalty": "sparse"},
        {"id": "TextChat-v0", "kl_penalty": "deferred"}, {"id": "TextChat-v0", "kl_penalty": "sparse"}]
    assert {row["task"] for row in result.summary} == {"arithmetic", "guess-number"}
    assert "| guess-number | grpo |" in result.summary_markdown
