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
* :func:`analyze` (in :mod:`agents.compare_report`, with the tables and figures; re-exported here): the
  statistics, all from rliable (Agarwal et al. 2021; :mod:`agents.statistics`).
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
from agents.compare_report import (  # noqa: F401  (re-exported: agents.compare is the public module)
    Analysis, algorithm_colors, analyze, curve_matrix, plot_curves, plot_intervals, plot_profiles, score_matrix,
    summarize, summary_markdown, task_normalizations)
from agents.statistics import DEFAULT_REPS
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
VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "gymnasium", "stable-baselines3", "sb3-contrib",
                                       "numpy", "tokenizers", "peft", "textarena", "ray", "rliable")
#: Columns of ``results.csv``: the run's results, then its whole configuration (the cache key and the values
#: it is made of) and the versions of the packages it ran with (empty for runs cached before they were recorded).
RESULT_COLUMNS = ("task", "env", "algo", "seed", "score_mean", "score_std", "kl_mean", "initial_score_mean",
                  "timesteps", "wall_time_s", "tokens_per_s", "budget", "config_key", "model", "num_envs", "eval_n",
                  "eval_seed", "kl_coef", "device", "threads", "hyperparams",
                  *(f"{name.replace('-', '_')}_version" for name in VERSIONED_PACKAGES), "text_envs_version")


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
