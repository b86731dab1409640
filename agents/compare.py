"""Compare RL algorithms on TextGen tasks with the same budget of generated tokens.

* :data:`ALGORITHMS` / :func:`make_algorithm` (from :mod:`agents.algorithm_registry`): algorithm
  names (``token-ppo``, ``ppo``, ``a2c``, ``maskable-ppo``, ``reinforce``, ``rloo``, ``grpo``) to
  configured stable-baselines3 algorithms on a fresh TextGen vec env.
* :func:`compare`: every task x algorithm x seed, each trained for ``timesteps`` generated tokens
  and evaluated on the same held-out prompts (:func:`agents.evaluation.evaluate_model`) at 0, 25,
  50, 75 and 100 % of the budget; writes one JSON per run (``runs/``), ``results.csv``,
  ``summary.md`` (mean and 95 % bootstrap CI across seeds) and ``curves.png``. Resumable: a run
  whose JSON exists is not redone.

Example::

    from agents import compare_algorithms   # or: from agents.compare import compare
    result = compare_algorithms(tasks=["sentiment"], algos=["token-ppo", "grpo"], seeds=3, timesteps=4096,
                     out="runs/cmp", model="tiny")
    print(result.summary_markdown)
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.algorithm_registry import ALGORITHMS, AlgoSpec, make_algorithm
from text_envs.atomic import atomic_path, write_json_atomic, write_text_atomic
from text_envs.errors import ConfigError

__all__ = ["ALGORITHMS", "CHECKPOINTS", "AlgoSpec", "CompareResult", "bootstrap_ci", "compare", "make_algorithm",
           "run_one", "summarize"]

#: Fractions of the budget at which every run is evaluated (the learning curves).
CHECKPOINTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


# ------------------------------------------------------------------------------------------- registry
# The name -> constructor registry is ``agents.algorithm_registry`` (shared with ``textgen-rl train``);
# ``ALGORITHMS`` and ``make_algorithm`` are re-exported here.


def get_algo_spec(name: str) -> AlgoSpec:
    """The :class:`AlgoSpec` of ``name``; ConfigError listing the known names otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def group_size_of(name: str, overrides: dict[str, Any] | None = None) -> int:
    """Completions per prompt that algorithm ``name`` samples (1 for the non-grouped ones)."""
    import inspect

    spec = get_algo_spec(name)
    value = {**spec.defaults, **(overrides or {})}.get("group_size")
    if value is None:
        parameter = inspect.signature(spec.load_class().__init__).parameters.get("group_size")
        value = parameter.default if parameter is not None else 1
    return int(value)


# ------------------------------------------------------------------------------------------ statistics
def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and the percentile bootstrap confidence interval of the mean: ``(mean, low, high)``.

    One value gives ``(v, v, v)``; NaNs are dropped; no values give NaNs.
    """
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(data.mean())
    if data.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


# ------------------------------------------------------------------------------------------ one run
class _EvalCheckpoints(BaseCallback):
    """Evaluates the policy's LM when a rollout starts past the next checkpoint (in generated tokens)."""

    def __init__(self, evaluate: Callable[[int], None], checkpoints: list[int]) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.pending = sorted(checkpoints)

    def _on_rollout_start(self) -> None:
        if self.pending and self.num_timesteps >= self.pending[0]:
            while self.pending and self.num_timesteps >= self.pending[0]:
                self.pending.pop(0)
            self.evaluate(self.num_timesteps)

    def _on_step(self) -> bool:
        return True


def run_one(task: str, algo: str, seed: int, timesteps: int, model: str = "tiny", num_envs: int = 8,
            eval_n: int = 32, kl_coef: float = 0.05, device: str = "auto",
            hyperparams: dict[str, Any] | None = None, run_dir: Path | None = None,
            checkpoint_every: int = 0) -> dict[str, Any]:
    """Train ``algo`` on ``task`` for ``timesteps`` generated tokens and evaluate it along the way.

    Returns a JSON-ready record: ``task, algo, seed, timesteps`` (tokens actually generated),
    ``score_mean, score_std, kl_mean`` (final evaluation), ``curve`` (list of ``{tokens, score_mean,
    kl_mean}``), ``wall_time_s`` (training and evaluations), ``train_time_s``, ``tokens_per_s``
    (generated tokens per second of training).

    With ``run_dir`` and ``checkpoint_every > 0`` the run checkpoints itself there every
    ``checkpoint_every`` updates (curve so far included) and, called again after being killed,
    continues from its last checkpoint to the same result.
    """
    import torch

    from agents.checkpoint import CheckpointCallback, has_checkpoint, load_checkpoint
    from agents.evaluation import evaluate_model
    from text_envs.vector_env import TextGenVectorEnv

    get_algo_spec(algo)
    start = time.perf_counter()
    torch.manual_seed(seed)
    env_kwargs = {"task": task, "model": model, "kl_coef": kl_coef, "device": device}
    agent = make_algorithm(algo, env_kwargs=env_kwargs, num_envs=num_envs, model=model, seed=seed, device=device,
                           overrides=hyperparams)
    # a separate env for the held-out evaluations (reference = the base model), so that evaluating in the
    # middle of training never resets the training env
    eval_env = TextGenVectorEnv(num_envs=min(num_envs, eval_n), model=model, task=task, kl_coef=1.0, device=device)
    curve: list[dict[str, float]] = []
    spent = {"eval": 0.0, "wall": 0.0}  # seconds spent before this call (a resumed run) are added at the end

    def evaluate(tokens: int) -> None:
        t0 = time.perf_counter()
        lm = agent.policy.lm
        was_training = lm.training
        lm.eval()
        result = evaluate_model(lm, task, n=eval_n, device=device, env=eval_env)
        lm.train(was_training)
        curve.append({"tokens": int(tokens), "score_mean": result.score_mean, "score_std": result.score_std,
                      "kl_mean": result.kl_mean})
        spent["eval"] += time.perf_counter() - t0

    evaluations = _EvalCheckpoints(evaluate, [int(round(f * timesteps)) for f in CHECKPOINTS if 0 < f < 1])
    callbacks: list[BaseCallback] = [evaluations]
    resumed = run_dir is not None and has_checkpoint(run_dir)
    iterations = 0
    if resumed:
        extra = load_checkpoint(agent, run_dir)
        curve.extend(extra["curve"])
        evaluations.pending = list(extra["pending"])
        spent.update(eval=float(extra["eval_time"]), wall=float(extra["wall_time"]))
        iterations = int(extra["iterations"])
    else:
        evaluate(0)
    if run_dir is not None and checkpoint_every:
        callbacks.append(CheckpointCallback(run_dir, checkpoint_every, lambda: {
            "curve": list(curve), "pending": list(evaluations.pending), "eval_time": spent["eval"],
            "wall_time": spent["wall"] + time.perf_counter() - start}, iterations))
    if timesteps > agent.num_timesteps:
        agent.learn(timesteps - int(agent.num_timesteps), callback=callbacks, reset_num_timesteps=not resumed)
    evaluate(agent.num_timesteps)
    agent.env.close()
    eval_env.close()
    wall = spent["wall"] + time.perf_counter() - start
    train_time = max(wall - spent["eval"], 1e-9)
    final = curve[-1]
    return {"task": task, "algo": algo, "seed": seed, "timesteps": int(agent.num_timesteps), "budget": timesteps,
            "score_mean": final["score_mean"], "score_std": final["score_std"], "kl_mean": final["kl_mean"],
            "initial_score_mean": curve[0]["score_mean"], "curve": curve, "wall_time_s": wall,
            "train_time_s": train_time, "tokens_per_s": agent.num_timesteps / train_time, "model": str(model),
            "num_envs": num_envs, "eval_n": eval_n, "kl_coef": kl_coef, "resumed": resumed}


def run_config(task: str, algo: str, seed: int, timesteps: int, model: str, num_envs: int, eval_n: int,
               kl_coef: float, device: str, hyperparams: dict[str, Any] | None) -> dict[str, Any]:
    """Everything that determines a run's result: what its cache key is made of."""
    import torch

    from text_envs import __version__
    from text_envs.devices import resolve_device
    from text_envs.tasks import DEFAULT_EVAL_SEED

    spec = get_algo_spec(algo)
    model_path = Path(model).expanduser()
    return {"task": task, "algo": algo, "seed": seed, "timesteps": timesteps,
            "model": str(model_path.resolve()) if model_path.exists() else str(model), "num_envs": num_envs,
            "eval_n": eval_n, "eval_seed": DEFAULT_EVAL_SEED, "eval_points": list(CHECKPOINTS), "kl_coef": kl_coef,
            "device": resolve_device(device).type, "threads": torch.get_num_threads(),
            "hyperparams": {**spec.defaults, **(hyperparams or {})}, "version": __version__}


def run_key(config: dict[str, Any]) -> str:
    """The file stem of a run: readable names plus a hash of its whole configuration."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{config['task']}__{config['algo']}__seed{config['seed']}__{digest}"


# --------------------------------------------------------------------------------------------- compare
@dataclass
class CompareResult:
    """What :func:`compare` produced.

    :param runs: one record per run (see :func:`run_one`).
    :param summary: one row per task x algorithm: ``task, algo, n_seeds, score_mean, ci_low, ci_high,
        kl_mean, initial_score_mean, tokens, tokens_per_s, best``.
    :param out: the output folder; ``results_csv``, ``summary_md``, ``curves_png`` its files.
    :param counts: how many runs were reused from the cache, resumed from a checkpoint, trained from scratch.
    """

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out: Path
    results_csv: Path
    summary_md: Path
    curves_png: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # runs "reused" from the cache, "resumed", "trained"

    @property
    def summary_markdown(self) -> str:
        """The contents of ``summary.md``."""
        return self.summary_md.read_text()


RESULT_COLUMNS = ("task", "algo", "seed", "score_mean", "score_std", "kl_mean", "initial_score_mean", "timesteps",
                  "wall_time_s", "tokens_per_s")


def _parse_names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def summarize(runs: list[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per task x algorithm: mean final score across seeds with its bootstrap CI; the best mean of
    each task is flagged ``best``."""
    rows = []
    keys = list(dict.fromkeys((r["task"], r["algo"]) for r in runs))
    for task, algo in keys:
        group = [r for r in runs if r["task"] == task and r["algo"] == algo]
        mean, low, high = bootstrap_ci([r["score_mean"] for r in group], confidence)
        rows.append({"task": task, "algo": algo, "n_seeds": len(group), "score_mean": mean, "ci_low": low,
                     "ci_high": high, "kl_mean": float(np.mean([r["kl_mean"] for r in group])),
                     "initial_score_mean": float(np.mean([r["initial_score_mean"] for r in group])),
                     "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in group])),
                     "tokens": float(np.mean([r["timesteps"] for r in group])), "best": False})
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task and np.isfinite(r["score_mean"])]
        if task_rows:
            max(task_rows, key=lambda r: r["score_mean"])["best"] = True
    return rows


def summary_markdown(rows: list[dict[str, Any]], timesteps: int, counts: dict[str, int] | None = None,
                     confidence: float = 0.95) -> str:
    """The markdown table of :func:`summarize`'s rows (and, with ``counts``, how many runs were reused)."""
    lines = [f"Final held-out score after {timesteps} generated tokens: mean across seeds "
             f"[{int(confidence * 100)}% bootstrap CI]; best per task in bold. `tokens`: generated tokens "
             "actually used (a run ends with a whole rollout, so it may pass the budget); `KL`: sampled "
             "KL(pi || pi_ref) per completion; `tokens/s`: generated tokens per second of training (evaluations "
             "excluded).", "",
             "| task | algorithm | seeds | score | CI | score at 0 | KL | tokens | tokens/s |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        score = f"{row['score_mean']:.3f}"
        if row["best"]:
            score = f"**{score}**"
        lines.append(f"| {row['task']} | {row['algo']} | {row['n_seeds']} | {score} | "
                     f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row['initial_score_mean']:.3f} | "
                     f"{row['kl_mean']:.3f} | {row['tokens']:.0f} | {row['tokens_per_s']:.0f} |")
    if counts is not None:
        lines += ["", f"Runs: {counts.get('trained', 0)} trained, {counts.get('resumed', 0)} resumed from a "
                      f"checkpoint, {counts.get('reused', 0)} reused from the cache (same configuration)."]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict[str, Any]], path: Path, confidence: float = 0.95) -> Path:
    """Eval score vs generated tokens: mean and bootstrap CI band across seeds per algorithm, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for algo in dict.fromkeys(r["algo"] for r in runs if r["task"] == task):
            group = [r for r in runs if r["task"] == task and r["algo"] == algo]
            # seeds are evaluated at slightly different token counts: interpolate each seed's curve at
            # every evaluated point up to the shortest run, then add the final evaluations
            curves = [([c["tokens"] for c in r["curve"]], [c["score_mean"] for c in r["curve"]]) for r in group]
            shortest = min(x[-1] for x, _ in curves)
            xs = sorted({x for tokens, _ in curves for x in tokens if x < shortest})
            columns = [[float(np.interp(x, tokens, scores)) for tokens, scores in curves] for x in xs]
            xs.append(float(np.mean([tokens[-1] for tokens, _ in curves])))
            columns.append([scores[-1] for _, scores in curves])
            stats = [bootstrap_ci(column, confidence) for column in columns]
            means = [s[0] for s in stats]
            line, = ax.plot(xs, means, marker="o", markersize=3, label=algo)
            ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], color=line.get_color(), alpha=0.15)
        ax.set_title(task)
        ax.set_xlabel("generated tokens")
        ax.set_ylabel("held-out score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def compare(tasks: str | Sequence[str] = ("sentiment",), algos: str | Sequence[str] = tuple(ALGORITHMS),
            seeds: int | Sequence[int] = 3, timesteps: int = 4096, out: str | Path = "runs/compare",
            model: str = "tiny", num_envs: int = 8, eval_n: int = 32, kl_coef: float = 0.05, device: str = "auto",
            hyperparams: dict[str, dict[str, Any]] | None = None, progress: bool = True,
            plot: bool = True, checkpoint_every: int = 10) -> CompareResult:
    """Run every task x algorithm x seed with the same budget of generated tokens and summarise.

    :param tasks: task names (list or comma-separated string).
    :param algos: algorithm names (keys of :data:`ALGORITHMS`; list or comma-separated string).
    :param seeds: number of seeds (``0..seeds-1``) or the seeds themselves.
    :param timesteps: budget in generated tokens per run.
    :param out: output folder (created). A finished run is cached in ``runs/<key>.json``, ``<key>`` being
        ``<task>__<algo>__seed<k>__<hash>`` where the hash covers the run's whole configuration
        (:func:`run_config`: budget, model, every hyperparameter, evaluation settings, threads, package
        version): rerunning with the same settings reuses it, changed settings rerun it. An unfinished
        run continues from its checkpoint in ``runs/<key>/``, so a killed comparison resumes mid-run.
    :param model: model alias or path, shared by policy, reference and evaluation.
    :param num_envs: parallel episodes per run (a multiple of the grouped algorithms' group size).
    :param eval_n: held-out prompts per evaluation (the same for every run: the default evaluation seed).
    :param kl_coef: KL coefficient of the env.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    :param hyperparams: per-algorithm overrides, e.g. ``{"grpo": {"learning_rate": 1e-4}}``.
    :param progress: show a tqdm bar over runs and one line per finished run.
    :param plot: write ``curves.png``.
    :param checkpoint_every: updates between the checkpoints of each run (0: none).
    :raises ConfigError: unknown algorithm, bad budget, ``num_envs`` not divisible by a group size.
    """
    from text_envs.tasks import get_task

    task_names, algo_names = _parse_names(tasks), _parse_names(algos)
    if not task_names or not algo_names:
        raise ConfigError("compare needs at least one task and one algorithm")
    specs = [get_algo_spec(a) for a in algo_names]
    for name in task_names:
        get_task(name)  # fails early on an unknown task
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("compare needs at least one seed")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ConfigError(f"timesteps must be a positive int, got {timesteps!r}")
    hyperparams = hyperparams or {}
    for spec in specs:
        group = group_size_of(spec.name, hyperparams.get(spec.name))
        if num_envs % group:
            raise ConfigError(f"{spec.name} samples {group} completions per prompt: num_envs={num_envs} "
                              f"must be a multiple of {group}")
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    plan = [(t, a, s) for t in task_names for a in algo_names for s in seed_list]
    records: list[dict[str, Any]] = []
    counts = {"reused": 0, "resumed": 0, "trained": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="compare", unit="run")
    try:
        for task, algo, seed in plan:
            config = run_config(task, algo, seed, timesteps, model, num_envs, eval_n, kl_coef, device,
                                hyperparams.get(algo))
            key = run_key(config)
            path = runs_dir / f"{key}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                status = "reused"
            else:
                record = run_one(task, algo, seed, timesteps, model=model, num_envs=num_envs, eval_n=eval_n,
                                 kl_coef=kl_coef, device=device, hyperparams=hyperparams.get(algo),
                                 run_dir=runs_dir / key, checkpoint_every=checkpoint_every)
                record["config"] = config
                write_json_atomic(path, record)
                shutil.rmtree(runs_dir / key, ignore_errors=True)  # its checkpoint: the record replaces it
                status = "resumed" if record.get("resumed") else "trained"
            counts[status] += 1
            records.append(record)
            if bar is not None:
                bar.update(1)
                bar.write(f"{task} {algo} seed={seed}: score {record['initial_score_mean']:.3f} -> "
                          f"{record['score_mean']:.3f}, kl {record['kl_mean']:.3f}, "
                          f"{record['tokens_per_s']:.0f} tok/s ({status})")
    finally:
        if bar is not None:
            bar.close()
    write_json_atomic(out / "runs.json", records)
    results_csv = out / "results.csv"
    with atomic_path(results_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    rows = summarize(records)
    summary_md = out / "summary.md"
    write_text_atomic(summary_md, summary_markdown(rows, timesteps, counts))
    curves = plot_curves(records, out / "curves.png") if plot else None
    return CompareResult(runs=records, summary=rows, out=out, results_csv=results_csv, summary_md=summary_md,
                         curves_png=curves, counts=counts)
