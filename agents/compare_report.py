"""The statistics, tables and figures of an algorithm comparison (what :func:`agents.compare.compare` writes
next to its runs): :func:`analyze` (rliable, through :mod:`agents.statistics`: per-task normalisation,
cross-task IQM / mean / optimality gap with stratified-bootstrap CIs, probability of improvement, performance
profiles), :func:`summarize` (per task x algorithm), :func:`summary_markdown` (``summary.md``) and the plots
:func:`plot_curves` (``curves.png``), :func:`plot_intervals` (``intervals.png``) and :func:`plot_profiles`
(``profiles.png``). Everything here reads run records (dicts, see :func:`agents.compare.run_one`); nothing
trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents import statistics
from agents.statistics import AGGREGATE_METRICS, DEFAULT_REPS, Interval, TaskNormalization
from text_envs.atomic import atomic_path
from text_envs.errors import ConfigError

__all__ = ["Analysis", "algorithm_colors", "analyze", "curve_matrix", "plot_curves", "plot_intervals",
           "plot_profiles", "score_matrix", "summarize", "summary_markdown", "task_normalizations"]


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
