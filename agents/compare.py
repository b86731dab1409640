"""Compare RL algorithms on text tasks with the same budget of generated tokens.

* :data:`ALGORITHMS` / :func:`make_algorithm` (from :mod:`agents.algorithm_registry`): algorithm
  names (``token-ppo``, ``ppo``, ``a2c``, ``maskable-ppo``, ``reinforce``, ``rloo``, ``grpo``,
  ``dr-grpo``, ``dapo``) to configured stable-baselines3 algorithms on a fresh TextGen vec env.
* :func:`compare`: every task x algorithm x seed, each trained for ``timesteps`` generated tokens (a task
  is a TextGen-v0 task, e.g. ``sentiment``, or a multi-turn TextChat-v0 responder, e.g. ``guess-number`` or
  ``textarena:GuessTheNumber-v0``: :func:`task_env`)
  and evaluated on the same held-out prompts (:func:`agents.evaluation.evaluate_model`) at 0, 25,
  50, 75 and 100 % of the budget; writes one JSON per run (``runs/``), ``results.csv`` (one row per
  run with its whole configuration and package versions), ``summary.md``, ``curves.png``,
  ``intervals.png`` and ``profiles.png``. Resumable: a run whose JSON exists is not redone.
* :func:`analyze`: the statistics, all from rliable (Agarwal et al. 2021; :mod:`agents.statistics`).
  Scores are normalised per task, 0 = the untrained model's held-out score, 1 = the best mean final
  score of any algorithm of the sweep on that task (or a fixed per-task reference, ``references``);
  across tasks: IQM, mean and optimality gap with stratified-bootstrap CIs, the probability of
  improvement of every algorithm over every other, and performance profiles; per task: mean and IQM
  with their CIs. ``summary.md`` leads with the cross-task table and the probability-of-improvement
  matrix.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents import statistics
from agents.algorithm_registry import ALGORITHMS, AlgoSpec, make_algorithm
from agents.compare_ray import WORKER_THREADS, check_backend
from agents.statistics import AGGREGATE_METRICS, DEFAULT_REPS, Interval, TaskNormalization
from text_envs.atomic import atomic_path, write_json_atomic, write_text_atomic
from text_envs.errors import ConfigError

__all__ = ["ALGORITHMS", "CHECKPOINTS", "AlgoSpec", "Analysis", "CompareResult", "analyze", "compare",
           "make_algorithm", "run_one", "summarize"]

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


def task_env(name: str) -> str:
    """The env a comparison task runs in: ``"TextGen-v0"`` for a registered task (``sentiment``...),
    ``"TextChat-v0"`` for a responder (``guess-number``, ``calculator``, ``textarena:<GameId>``), whose
    episodes are whole dialogues and whose score is the responder's reward.

    :raises ConfigError: ``name`` is neither (the message lists both).
    :raises MissingDependencyError: a TextArena game without ``textarena`` installed.
    """
    from text_envs.errors import UnknownResponderError
    from text_envs.responders import list_responders, responder_factory
    from text_envs.tasks import list_tasks

    tasks = [task.name for task in list_tasks()]
    if name in tasks:
        return "TextGen-v0"
    try:
        responder_factory(name)
    except UnknownResponderError:
        raise ConfigError(f"unknown task {name!r}: neither a task ({', '.join(tasks)}) nor a responder "
                          f"({', '.join(list_responders())}, textarena:<GameId>)") from None
    return "TextChat-v0"


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
    from text_envs.chat_env import TextChatVectorEnv
    from text_envs.vector_env import TextGenVectorEnv

    get_algo_spec(algo)
    env_id = task_env(task)
    start = time.perf_counter()
    torch.manual_seed(seed)
    env_kwargs = {"task": task, "model": model, "kl_coef": kl_coef, "device": device}
    agent = make_algorithm(algo, env_kwargs=env_kwargs, num_envs=num_envs, model=model, seed=seed, device=device,
                           overrides=hyperparams, env_id=env_id)
    # a separate env for the held-out evaluations (reference = the base model), so that evaluating in the
    # middle of training never resets the training env; its KL is the reference term's sum (sparse: one pass)
    eval_class = TextChatVectorEnv if env_id == "TextChat-v0" else TextGenVectorEnv
    eval_env = eval_class(num_envs=min(num_envs, eval_n), model=model, task=task, kl_coef=1.0, kl_penalty="sparse",
                          device=device)
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
    return {"task": task, "env": env_id, "algo": algo, "seed": seed, "timesteps": int(agent.num_timesteps),
            "budget": timesteps,
            "score_mean": final["score_mean"], "score_std": final["score_std"], "kl_mean": final["kl_mean"],
            "initial_score_mean": curve[0]["score_mean"], "curve": curve, "wall_time_s": wall,
            "train_time_s": train_time, "tokens_per_s": agent.num_timesteps / train_time, "model": str(model),
            "num_envs": num_envs, "eval_n": eval_n, "kl_coef": kl_coef, "resumed": resumed,
            "versions": package_versions()}


def run_config(task: str, algo: str, seed: int, timesteps: int, model: str, num_envs: int, eval_n: int,
               kl_coef: float, device: str, hyperparams: dict[str, Any] | None,
               threads: int | None = None) -> dict[str, Any]:
    """Everything that determines a run's result: what its cache key is made of.

    :param threads: the torch threads the run will train with (None: this process's current number).
    """
    import torch

    from text_envs import __version__
    from text_envs.devices import resolve_device
    from text_envs.tasks import DEFAULT_EVAL_SEED

    spec = get_algo_spec(algo)
    model_path = Path(model).expanduser()
    return {"task": task, "env": {"id": task_env(task), **spec.env_defaults}, "algo": algo, "seed": seed,
            "timesteps": timesteps,
            "model": str(model_path.resolve()) if model_path.exists() else str(model), "num_envs": num_envs,
            "eval_n": eval_n, "eval_seed": DEFAULT_EVAL_SEED, "eval_points": list(CHECKPOINTS), "kl_coef": kl_coef,
            "device": resolve_device(device).type, "threads": torch.get_num_threads() if threads is None else threads,
            "hyperparams": {**spec.defaults, **(hyperparams or {})}, "version": __version__}


def run_key(config: dict[str, Any]) -> str:
    """The file stem of a run: readable names plus a hash of its whole configuration."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{config['task']}__{config['algo']}__seed{config['seed']}__{digest}"


# --------------------------------------------------------------------------------------------- compare
@dataclass
class Analysis:
    """The statistics of a comparison (:func:`analyze`), all from rliable (:mod:`agents.statistics`).

    :param rows: per task x algorithm (see :func:`summarize`).
    :param normalization: per task, how its scores are normalised (0 = untrained model, 1 = reference).
    :param tasks: the tasks of the cross-task aggregates (those whose normalisation is defined).
    :param excluded: the other tasks (no reference above the untrained score).
    :param normalized: per algorithm, the normalised final scores ``(seeds, len(tasks))``.
    :param aggregate: per algorithm, ``{metric: Interval}`` for :data:`agents.statistics.AGGREGATE_METRICS`
        over ``tasks`` (empty when no task is normalisable).
    :param improvement: ``{(x, y): P(x > y)}`` for every ordered pair, over all tasks (raw scores).
    :param taus: thresholds of ``profiles`` (None without a normalisable task).
    :param profiles: per algorithm ``(profile, low, high)`` over ``taus``.
    :param confidence: CI coverage; ``reps``: bootstrap resamples; ``seed``: bootstrap seed.
    """

    rows: list[dict[str, Any]]
    normalization: dict[str, TaskNormalization]
    tasks: list[str]
    excluded: list[str]
    normalized: dict[str, np.ndarray]
    aggregate: dict[str, dict[str, Interval]]
    improvement: dict[tuple[str, str], Interval]
    taus: np.ndarray | None
    profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    confidence: float
    reps: int
    seed: int


@dataclass
class CompareResult:
    """What :func:`compare` produced.

    :param runs: one record per run (see :func:`run_one`).
    :param summary: one row per task x algorithm (see :func:`summarize`).
    :param out: the output folder; ``results_csv``, ``summary_md``, ``curves_png``, ``intervals_png``,
        ``profiles_png`` its files (the figures None when not plotted or, for the last two, when no task
        could be normalised).
    :param counts: how many runs were reused from the cache, resumed from a checkpoint, trained from scratch.
    :param statistics: the cross-task statistics behind ``summary.md``.
    """

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out: Path
    results_csv: Path
    summary_md: Path
    curves_png: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # runs "reused" from the cache, "resumed", "trained"
    statistics: Analysis | None = None
    intervals_png: Path | None = None
    profiles_png: Path | None = None

    @property
    def summary_markdown(self) -> str:
        """The contents of ``summary.md``."""
        return self.summary_md.read_text()


#: Packages whose versions every run records (``results.csv`` column ``<name>_version``).
VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "gymnasium", "stable-baselines3")
#: Columns of ``results.csv``: the run's results, then its whole configuration (the cache key and the values
#: it is made of) and the versions of the packages it ran with (empty for runs cached before they were recorded).
RESULT_COLUMNS = ("task", "env", "algo", "seed", "score_mean", "score_std", "kl_mean", "initial_score_mean",
                  "timesteps", "wall_time_s", "tokens_per_s", "budget", "config_key", "model", "num_envs", "eval_n",
                  "eval_seed", "kl_coef", "device", "threads", "hyperparams", "torch_version", "transformers_version",
                  "gymnasium_version", "stable_baselines3_version", "text_envs_version")


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED_PACKAGES` and of ``text_envs`` (``"not installed"`` if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    from text_envs import __version__

    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    versions["text_envs"] = __version__
    return versions


def result_row(record: dict[str, Any], key: str) -> dict[str, Any]:
    """The ``results.csv`` row of a run record (its ``config`` and ``versions``, when recorded, included)."""
    config = record.get("config", {})
    versions = record.get("versions", {})
    row = {column: record.get(column, "") for column in RESULT_COLUMNS[:11]}
    if "env" in config:  # the env id and the env arguments the algorithm runs with (its kl_penalty)
        row["env"] = json.dumps(config["env"], sort_keys=True)
    row.update({"budget": config.get("timesteps", record.get("budget", "")), "config_key": key,
                "model": config.get("model", record.get("model", "")),
                "num_envs": config.get("num_envs", record.get("num_envs", "")),
                "eval_n": config.get("eval_n", record.get("eval_n", "")), "eval_seed": config.get("eval_seed", ""),
                "kl_coef": config.get("kl_coef", record.get("kl_coef", "")), "device": config.get("device", ""),
                "threads": config.get("threads", ""),
                "hyperparams": json.dumps(config.get("hyperparams", {}), sort_keys=True, default=str),
                "text_envs_version": versions.get("text_envs", config.get("version", ""))})
    for name in VERSIONED_PACKAGES:
        row[f"{name.replace('-', '_')}_version"] = versions.get(name, "")
    return row


def _parse_names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def _runs_of(runs: list[dict[str, Any]], task: str, algo: str) -> list[dict[str, Any]]:
    """The runs of ``algo`` on ``task``, by seed."""
    return sorted((r for r in runs if r["task"] == task and r["algo"] == algo), key=lambda r: r["seed"])


def score_matrix(runs: list[dict[str, Any]], algo: str, tasks: Sequence[str]) -> np.ndarray:
    """Final scores of ``algo``: ``(seeds, len(tasks))``, row ``r`` its ``r``-th seed on every task.

    :raises ConfigError: the algorithm does not have the same seeds on every task.
    """
    seeds = {task: [r["seed"] for r in _runs_of(runs, task, algo)] for task in tasks}
    first = seeds[tasks[0]]
    if not first or any(s != first for s in seeds.values()):
        raise ConfigError(f"cross-task statistics need the same seeds of {algo!r} on every task, got {seeds}")
    return np.array([[r["score_mean"] for r in _runs_of(runs, task, algo)] for task in tasks], dtype=float).T


def task_normalizations(runs: list[dict[str, Any]],
                        references: Mapping[str, float] | None = None) -> dict[str, TaskNormalization]:
    """Per task: 0 = the untrained model's held-out score (the mean of the runs' evaluations at 0 tokens: the
    same base model on the same prompts), 1 = ``references[task]`` when given (a fixed reference), else the
    best mean final score (over seeds) of any algorithm of the sweep on the task."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        untrained = float(np.mean([r["initial_score_mean"] for r in runs if r["task"] == task]))
        if references and task in references:
            out[task] = TaskNormalization(task, untrained, float(references[task]), "fixed")
            continue
        means = {algo: float(np.mean([r["score_mean"] for r in _runs_of(runs, task, algo)]))
                 for algo in dict.fromkeys(r["algo"] for r in runs if r["task"] == task)}
        best = max(means, key=lambda a: means[a] if np.isfinite(means[a]) else -np.inf)
        out[task] = TaskNormalization(task, untrained, means[best], f"best mean: {best}")
    return out


def summarize(runs: list[dict[str, Any]], confidence: float = 0.95, reps: int = DEFAULT_REPS, seed: int = 0,
              references: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Per task x algorithm, with percentile stratified-bootstrap CIs across seeds (rliable):

    ``task, algo, n_seeds``; ``score_mean, ci_low, ci_high`` (mean final score and its CI) and ``score_iqm,
    iqm_low, iqm_high`` (interquartile mean), in the task's own units; ``normalized_mean, normalized_iqm``
    (the same under :func:`task_normalizations`; an affine map, so the CIs map the same way; NaN when the
    task's scale is undefined); ``kl_mean, initial_score_mean, tokens, tokens_per_s`` (means over seeds);
    ``best``: the highest mean of its task. A NaN final score makes its group's statistics NaN (a score
    matrix has no holes to skip).
    """
    normalization = task_normalizations(runs, references)
    rows = []
    for task, algo in dict.fromkeys((r["task"], r["algo"]) for r in runs):
        group = _runs_of(runs, task, algo)
        scores = np.array([[r["score_mean"]] for r in group], dtype=float)  # (seeds, 1)
        [(iqm, mean)] = statistics.interval_estimates({algo: scores}, statistics.task_metrics, reps, confidence,
                                                      statistics.stream_seed(seed, task)).values()
        scale = normalization[task]
        rows.append({"task": task, "algo": algo, "n_seeds": len(group), "score_mean": mean.point,
                     "ci_low": mean.low, "ci_high": mean.high, "score_iqm": iqm.point, "iqm_low": iqm.low,
                     "iqm_high": iqm.high, "normalized_mean": float(scale.apply(mean.point)),
                     "normalized_iqm": float(scale.apply(iqm.point)),
                     "kl_mean": float(np.mean([r["kl_mean"] for r in group])),
                     "initial_score_mean": float(np.mean([r["initial_score_mean"] for r in group])),
                     "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in group])),
                     "tokens": float(np.mean([r["timesteps"] for r in group])), "best": False})
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task and np.isfinite(r["score_mean"])]
        if task_rows:
            max(task_rows, key=lambda r: r["score_mean"])["best"] = True
    return rows


def analyze(runs: list[dict[str, Any]], confidence: float = 0.95, reps: int = DEFAULT_REPS, seed: int = 0,
            references: Mapping[str, float] | None = None) -> Analysis:
    """Everything ``summary.md`` reports: :func:`summarize`'s rows plus, across tasks, the IQM, mean and
    optimality gap of normalised scores with stratified-bootstrap CIs, the probability of improvement of
    every algorithm over every other, and performance profiles (see :mod:`agents.statistics`).

    Normalisation (:func:`task_normalizations`): per task, 0 = untrained model, 1 = the best mean final score
    of the sweep (or ``references[task]``). A task where that reference is not above the untrained score
    (no algorithm improved on the untrained model) has no scale: it is left out of the cross-task aggregates
    and profiles (listed in ``excluded``), but counts in the probability of improvement, which compares raw
    scores within each task.
    """
    rows = summarize(runs, confidence, reps, seed, references)
    normalization = task_normalizations(runs, references)
    all_tasks = list(normalization)
    algos = list(dict.fromkeys(r["algo"] for r in runs))
    tasks = [t for t in all_tasks if normalization[t].usable]
    raw = {algo: score_matrix(runs, algo, all_tasks) for algo in algos}  # (seeds, all tasks)
    normalized: dict[str, np.ndarray] = {}
    aggregate: dict[str, dict[str, Interval]] = {}
    taus, profiles = None, {}
    if tasks:
        columns = [all_tasks.index(t) for t in tasks]
        normalized = {algo: statistics.normalize_scores(raw[algo][:, columns],
                                                        [normalization[t].untrained for t in tasks],
                                                        [normalization[t].reference for t in tasks])
                      for algo in algos}
        estimates = statistics.interval_estimates(normalized, statistics.aggregate_metrics, reps, confidence, seed)
        aggregate = {algo: dict(zip(AGGREGATE_METRICS, intervals)) for algo, intervals in estimates.items()}
        taus = statistics.profile_thresholds(normalized)
        profiles = statistics.performance_profiles(normalized, taus, reps, confidence, seed)
    improvement = statistics.probability_of_improvement(raw, reps, confidence, seed) if len(algos) > 1 else {}
    return Analysis(rows=rows, normalization=normalization, tasks=tasks,
                    excluded=[t for t in all_tasks if t not in tasks], normalized=normalized, aggregate=aggregate,
                    improvement=improvement, taus=taus, profiles=profiles, confidence=confidence, reps=reps,
                    seed=seed)


def _ci(interval: Interval, digits: int = 3) -> str:
    return f"[{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _cross_task_lines(analysis: Analysis) -> list[str]:
    percent = f"{analysis.confidence * 100:g}%"
    lines = ["## Across tasks", ""]
    scales = "; ".join(f"{n.task}: {n.untrained:.3f} -> {n.reference:.3f} ({n.source})"
                       for n in analysis.normalization.values())
    lines += [f"Normalised final score: per task, 0 = the untrained model's held-out score, 1 = the best mean "
              f"final score of any algorithm of this sweep (or a fixed reference where one was given); "
              f"untrained -> reference: {scales}. IQM: interquartile mean of all runs x tasks; mean: of the "
              f"per-task means; optimality gap: 1 - mean(min(score, 1)), lower is better. {percent} percentile "
              f"stratified-bootstrap CIs ({analysis.reps} resamples of the seeds within each task; rliable).", ""]
    if not analysis.tasks:
        lines += ["No task could be normalised (on every task no algorithm's mean final score is above the "
                  "untrained model's): no cross-task aggregate; see the per-task table.", ""]
        return lines
    lines += ["| algorithm | runs | IQM | IQM CI | mean | mean CI | optimality gap | gap CI |",
              "|---|---:|---:|---|---:|---|---:|---|"]
    for algo, metrics in analysis.aggregate.items():
        iqm, mean, gap = (metrics[m] for m in AGGREGATE_METRICS)
        runs = analysis.normalized[algo].size
        lines.append(f"| {algo} | {runs} | {iqm.point:.3f} | {_ci(iqm)} | {mean.point:.3f} | {_ci(mean)} | "
                     f"{gap.point:.3f} | {_ci(gap)} |")
    if analysis.excluded:
        lines += ["", f"Left out (no algorithm's mean final score above the untrained model's, so no scale): "
                      f"{', '.join(analysis.excluded)}."]
    return lines + [""]


def _improvement_lines(analysis: Analysis) -> list[str]:
    algos = list(dict.fromkeys(r["algo"] for r in analysis.rows))
    lines = ["## Probability of improvement", ""]
    if len(algos) < 2:
        return lines + ["One algorithm: no pair to compare.", ""]
    lines += [f"P(row > column): the probability that a run of the row's algorithm ends above a run of the "
              f"column's on a task (Mann-Whitney U / (n_row n_column), ties count 1/2), averaged over all tasks "
              f"(raw scores), with {analysis.confidence * 100:g}% stratified-bootstrap CIs (rliable).", "",
              "| P(row > column) | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for x in algos:
        cells = ["-" if x == y else f"{analysis.improvement[(x, y)].point:.2f} {_ci(analysis.improvement[(x, y)], 2)}"
                 for y in algos]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary_markdown(analysis: Analysis, timesteps: int, counts: dict[str, int] | None = None) -> str:
    """``summary.md``: the cross-task table and the probability-of-improvement matrix first, then the
    per-task table (and, with ``counts``, how many runs were reused)."""
    rows = analysis.rows
    lines = ["# Algorithm comparison", "",
             f"{len(analysis.normalization)} task(s) x {len(dict.fromkeys(r['algo'] for r in rows))} algorithm(s), "
             f"final held-out score after {timesteps} generated tokens per run.", ""]
    lines += _cross_task_lines(analysis)
    lines += _improvement_lines(analysis)
    lines += ["## Per task", "",
              f"Final held-out score: mean and IQM across seeds [{analysis.confidence * 100:g}% stratified-bootstrap "
              "CI]; best mean per task in bold; `norm. IQM`: the IQM on the normalised scale above. `tokens`: "
              "generated tokens actually used (a run ends with a whole rollout, so it may pass the budget); `KL`: "
              "sampled KL(pi || pi_ref) per completion; `tokens/s`: generated tokens per second of training "
              "(evaluations excluded). With fewer than 4 seeds the IQM (25% trimmed from each end) trims nothing and "
              "equals the mean.", "",
              "| task | algorithm | seeds | score | CI | IQM | IQM CI | norm. IQM | score at 0 | KL | tokens | tokens/s |",
              "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        score = f"{row['score_mean']:.3f}"
        if row["best"]:
            score = f"**{score}**"
        lines.append(f"| {row['task']} | {row['algo']} | {row['n_seeds']} | {score} | "
                     f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row['score_iqm']:.3f} | "
                     f"[{row['iqm_low']:.3f}, {row['iqm_high']:.3f}] | {row['normalized_iqm']:.3f} | "
                     f"{row['initial_score_mean']:.3f} | {row['kl_mean']:.3f} | {row['tokens']:.0f} | "
                     f"{row['tokens_per_s']:.0f} |")
    if counts is not None:
        lines += ["", f"Runs: {counts.get('trained', 0)} trained, {counts.get('resumed', 0)} resumed from a "
                      f"checkpoint, {counts.get('reused', 0)} reused from the cache (same configuration)."]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def algorithm_colors(algos: Sequence[str]) -> dict[str, str]:
    """One matplotlib colour per algorithm, the same in every figure."""
    return {algo: f"C{i % 10}" for i, algo in enumerate(algos)}


def curve_matrix(group: list[dict[str, Any]]) -> tuple[list[float], np.ndarray]:
    """The learning curves of one task x algorithm on common points: ``xs (P,)``, scores ``(seeds, P)``.

    Seeds are evaluated at slightly different token counts: each seed's curve is interpolated at every
    evaluated point before the shortest run's end, then the final evaluations are added (at their mean
    token count).
    """
    curves = [([c["tokens"] for c in r["curve"]], [c["score_mean"] for c in r["curve"]]) for r in group]
    shortest = min(x[-1] for x, _ in curves)
    xs = sorted({x for tokens, _ in curves for x in tokens if x < shortest})
    columns = [[float(np.interp(x, tokens, scores)) for tokens, scores in curves] for x in xs]
    xs.append(float(np.mean([tokens[-1] for tokens, _ in curves])))
    columns.append([scores[-1] for _, scores in curves])
    return xs, np.array(columns, dtype=float).T  # (seeds, P)


def plot_curves(runs: list[dict[str, Any]], path: Path, confidence: float = 0.95, reps: int = DEFAULT_REPS,
                seed: int = 0) -> Path:
    """Eval score vs generated tokens: mean across seeds and its pointwise stratified-bootstrap CI band
    (rliable, :func:`agents.statistics.pointwise_mean_intervals`) per algorithm, one panel per task."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    colors = algorithm_colors(list(dict.fromkeys(r["algo"] for r in runs)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for algo in dict.fromkeys(r["algo"] for r in runs if r["task"] == task):
            xs, scores = curve_matrix(_runs_of(runs, task, algo))
            means, low, high = statistics.pointwise_mean_intervals(scores, reps, confidence,
                                                                   statistics.stream_seed(seed, task))
            ax.plot(xs, means, marker="o", markersize=3, label=algo, color=colors[algo])
            ax.fill_between(xs, low, high, color=colors[algo], alpha=0.15)
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


def plot_intervals(analysis: Analysis, path: Path) -> Path | None:
    """rliable's interval-estimate plot of the cross-task IQM, mean and optimality gap (None: no normalisable task)."""
    if not analysis.aggregate:
        return None
    from rliable import plot_utils

    plt = _pyplot()
    algos = list(analysis.aggregate)
    points = {a: np.array([analysis.aggregate[a][m].point for m in AGGREGATE_METRICS]) for a in algos}
    intervals = {a: np.array([[analysis.aggregate[a][m].low for m in AGGREGATE_METRICS],
                              [analysis.aggregate[a][m].high for m in AGGREGATE_METRICS]]) for a in algos}
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, metric_names=list(AGGREGATE_METRICS),
                                                algorithms=algos, colors=algorithm_colors(algos),
                                                xlabel=f"normalised score ({', '.join(analysis.tasks)})",
                                                row_height=max(0.6, 2.4 / len(algos)), max_ticks=3,
                                                xlabel_y_coordinate=-0.22, wspace=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_profiles(analysis: Analysis, path: Path) -> Path | None:
    """rliable's performance-profile plot (fraction of runs above each normalised score, with CI bands;
    None: no normalisable task)."""
    if not analysis.profiles or analysis.taus is None:
        return None
    from rliable import plot_utils

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    profiles = {a: p[0] for a, p in analysis.profiles.items()}
    cis = {a: np.stack([p[1], p[2]]) for a, p in analysis.profiles.items()}
    plot_utils.plot_performance_profiles(profiles, analysis.taus, performance_profile_cis=cis, ax=ax,
                                         colors=algorithm_colors(list(profiles)),
                                         xlabel=r"normalised score $\tau$",
                                         ylabel=r"fraction of runs with score $> \tau$", legend=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


@dataclass
class PlannedRun:
    """One run of a sweep: what it is, its cache key and, once cached or finished, its record.

    :param task: task name; ``algo``: algorithm name; ``seed``: its seed.
    :param config: :func:`run_config` (what ``key`` hashes).
    :param key: :func:`run_key`: the stem of ``runs/<key>.json`` and of its checkpoint folder ``runs/<key>/``.
    :param record: the run's record (see :func:`run_one`), None until reused from the cache or trained.
    :param status: ``"reused"``, ``"resumed"`` or ``"trained"`` once ``record`` is set.
    """

    task: str
    algo: str
    seed: int
    config: dict[str, Any]
    key: str
    record: dict[str, Any] | None = None
    status: str = ""


def plan_runs(task_names: Sequence[str], algo_names: Sequence[str], seeds: Sequence[int], settings: dict[str, Any],
              hyperparams: dict[str, dict[str, Any]], runs_dir: Path, threads: int | None = None) -> list[PlannedRun]:
    """Every task x algorithm x seed in sweep order, with its key and, when ``runs/<key>.json`` exists, its
    cached record (status ``"reused"``).

    :param settings: :func:`run_one`'s ``timesteps, model, num_envs, eval_n, kl_coef, device``.
    :param hyperparams: per-algorithm overrides.
    :param runs_dir: the sweep's ``runs/`` folder.
    :param threads: the torch threads the runs will train with (None: this process's).
    """
    plan = []
    for task, algo, seed in ((t, a, s) for t in task_names for a in algo_names for s in seeds):
        config = run_config(task, algo, seed, hyperparams=hyperparams.get(algo), threads=threads, **settings)
        run = PlannedRun(task, algo, seed, config, run_key(config))
        path = runs_dir / f"{run.key}.json"
        if path.is_file():
            run.record = json.loads(path.read_text())
            run.record.setdefault("config", config)
            run.status = "reused"
        plan.append(run)
    return plan


def _run_kwargs(run: PlannedRun, settings: dict[str, Any], hyperparams: dict[str, dict[str, Any]], runs_dir: Path,
                checkpoint_every: int) -> dict[str, Any]:
    """:func:`run_one`'s arguments for ``run`` (checkpointing into ``runs/<key>/``)."""
    return {"task": run.task, "algo": run.algo, "seed": run.seed, **settings, "hyperparams": hyperparams.get(run.algo),
            "run_dir": runs_dir / run.key, "checkpoint_every": checkpoint_every}


def _store(run: PlannedRun, record: dict[str, Any], runs_dir: Path) -> None:
    """Cache a finished run: ``runs/<key>.json`` (atomically, with its config), then remove its checkpoint."""
    record["config"] = run.config
    write_json_atomic(runs_dir / f"{run.key}.json", record)
    shutil.rmtree(runs_dir / run.key, ignore_errors=True)  # its checkpoint: the record replaces it
    run.record = record
    run.status = "resumed" if record.get("resumed") else "trained"


def _report(bar: Any, run: PlannedRun) -> None:
    """Advance the progress bar (None: no progress output) and print one line about a finished run."""
    if bar is None or run.record is None:
        return
    record = run.record
    bar.update(1)
    bar.write(f"{run.task} {run.algo} seed={run.seed}: score {record['initial_score_mean']:.3f} -> "
              f"{record['score_mean']:.3f}, kl {record['kl_mean']:.3f}, "
              f"{record['tokens_per_s']:.0f} tok/s ({run.status})")


def _run_local(plan: list[PlannedRun], settings: dict[str, Any], hyperparams: dict[str, dict[str, Any]],
               runs_dir: Path, checkpoint_every: int, bar: Any) -> None:
    """The local backend: the runs not cached yet, one after the other in this process, in plan order."""
    for run in plan:
        if run.record is None:
            kwargs = _run_kwargs(run, settings, hyperparams, runs_dir, checkpoint_every)
            args = [kwargs.pop(name) for name in ("task", "algo", "seed", "timesteps")]
            _store(run, run_one(*args, **kwargs), runs_dir)
        _report(bar, run)


def _run_ray(plan: list[PlannedRun], settings: dict[str, Any], hyperparams: dict[str, dict[str, Any]],
             runs_dir: Path, checkpoint_every: int, bar: Any, workers: int | None, address: str | None) -> None:
    """The ray backend: the runs not cached yet as Ray tasks (:func:`agents.compare_ray.run_jobs`), each cached
    as it finishes; the records stay in plan order."""
    from agents.compare_ray import run_jobs

    for run in plan:
        if run.record is not None:
            _report(bar, run)
    missing = [run for run in plan if run.record is None]
    jobs = [{**_run_kwargs(run, settings, hyperparams, runs_dir, checkpoint_every), "device": run.config["device"]}
            for run in missing]

    def finished(index: int, record: dict[str, Any]) -> None:
        _store(missing[index], record, runs_dir)
        _report(bar, missing[index])

    run_jobs(jobs, finished, workers=workers, address=address)


def compare(tasks: str | Sequence[str] = ("sentiment",), algos: str | Sequence[str] = tuple(ALGORITHMS),
            seeds: int | Sequence[int] = 3, timesteps: int = 4096, out: str | Path = "runs/compare",
            model: str = "tiny", num_envs: int = 8, eval_n: int = 32, kl_coef: float = 0.05, device: str = "auto",
            hyperparams: dict[str, dict[str, Any]] | None = None, progress: bool = True,
            plot: bool = True, checkpoint_every: int = 10, references: Mapping[str, float] | None = None,
            bootstrap_reps: int = DEFAULT_REPS, confidence: float = 0.95, stats_seed: int = 0,
            backend: str = "local", workers: int | None = None, address: str | None = None) -> CompareResult:
    """Run every task x algorithm x seed with the same budget of generated tokens and summarise.

    :param tasks: task names (list or comma-separated string): TextGen-v0 tasks and TextChat-v0 responders
        (multi-turn: ``guess-number``, ``calculator``, ``textarena:<GameId>``), see :func:`task_env`.
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
    :param plot: write ``curves.png``, ``intervals.png`` and ``profiles.png``.
    :param checkpoint_every: updates between the checkpoints of each run (0: none).
    :param references: fixed per-task reference scores (normalised score 1), e.g. ``{"sentiment": 0.5}``;
        tasks without one use the best mean final score of the sweep (see :func:`analyze`).
    :param bootstrap_reps: stratified-bootstrap resamples of every confidence interval.
    :param confidence: coverage of the confidence intervals.
    :param stats_seed: seed of the bootstraps (the statistics of the same runs are reproducible).
    :param backend: ``"local"`` (the runs one after the other in this process) or ``"ray"`` (every run not
        cached yet as a Ray task, in parallel: :mod:`agents.compare_ray`; one torch thread per run, so its cache
        key records ``threads=1``). Both write the same ``runs/`` folder, records and files.
    :param workers: ray backend: runs in parallel (default: the CPUs of this machine; on a cluster, as many
        as it schedules).
    :param address: ray backend: the address of a Ray cluster to join (default: start a local instance with
        ``workers`` CPUs, shut down at the end).
    :raises ConfigError: unknown algorithm, bad budget, ``num_envs`` not divisible by a group size, a
        reference for a task outside the sweep or not finite, bad bootstrap settings, unknown backend, bad
        ``workers`` or ``address`` (or either with the local backend), the ray backend off the CPU.
    :raises MissingDependencyError: rliable is not installed, or Ray for the ray backend (checked before any
        run).
    """
    task_names, algo_names = _parse_names(tasks), _parse_names(algos)
    if not task_names or not algo_names:
        raise ConfigError("compare needs at least one task and one algorithm")
    specs = [get_algo_spec(a) for a in algo_names]
    for name in task_names:
        task_env(name)  # fails early on an unknown task or responder
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("compare needs at least one seed")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ConfigError(f"timesteps must be a positive int, got {timesteps!r}")
    references = dict(references or {})
    for name, value in references.items():
        if name not in task_names:
            raise ConfigError(f"reference score for task {name!r}, which is not in the sweep ({', '.join(task_names)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ConfigError(f"reference score of task {name!r} must be a finite number, got {value!r}")
    statistics.check_bootstrap(bootstrap_reps, confidence)
    statistics.require_rliable()  # fail before hours of training, not after
    hyperparams = hyperparams or {}
    for spec in specs:
        group = group_size_of(spec.name, hyperparams.get(spec.name))
        if num_envs % group:
            raise ConfigError(f"{spec.name} samples {group} completions per prompt: num_envs={num_envs} "
                              f"must be a multiple of {group}")
    from text_envs.devices import resolve_device

    parallel = check_backend(backend, workers, address, resolve_device(device).type)
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    settings = {"timesteps": timesteps, "model": model, "num_envs": num_envs, "eval_n": eval_n, "kl_coef": kl_coef,
                "device": device}
    plan = plan_runs(task_names, algo_names, seed_list, settings, hyperparams, runs_dir,
                     threads=WORKER_THREADS if backend == "ray" else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="compare", unit="run")
    try:
        if backend == "ray":
            _run_ray(plan, settings, hyperparams, runs_dir, checkpoint_every, bar, parallel, address)
        else:
            _run_local(plan, settings, hyperparams, runs_dir, checkpoint_every, bar)
    finally:
        if bar is not None:
            bar.close()
    records = [run.record for run in plan if run.record is not None]
    assert len(records) == len(plan), "a backend returned without every run's record"
    keys = [run.key for run in plan]
    counts = {status: sum(run.status == status for run in plan) for status in ("reused", "resumed", "trained")}
    write_json_atomic(out / "runs.json", records)
    results_csv = out / "results.csv"
    with atomic_path(results_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(result_row(record, key) for record, key in zip(records, keys))
    analysis = analyze(records, confidence, bootstrap_reps, stats_seed, references)
    summary_md = out / "summary.md"
    write_text_atomic(summary_md, summary_markdown(analysis, timesteps, counts))
    curves = intervals = profiles = None
    if plot:
        curves = plot_curves(records, out / "curves.png", confidence, bootstrap_reps, stats_seed)
        intervals = plot_intervals(analysis, out / "intervals.png")
        profiles = plot_profiles(analysis, out / "profiles.png")
        for stale, written in ((out / "intervals.png", intervals), (out / "profiles.png", profiles)):
            if written is None:  # no normalisable task this time: never leave an older sweep's figure
                stale.unlink(missing_ok=True)
    return CompareResult(runs=records, summary=analysis.rows, out=out, results_csv=results_csv,
                         summary_md=summary_md, curves_png=curves, counts=counts, statistics=analysis,
                         intervals_png=intervals, profiles_png=profiles)
