"""Statistics of algorithm comparisons, from the field's own library: ``rliable`` (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice").

Small pure functions on score matrices; :mod:`agents.compare` turns its runs into these matrices.

Shapes: a score matrix is ``(R, K)``: ``R`` runs (seeds) of one algorithm on ``K`` tasks, ``scores[r, k]``
the final held-out score of run ``r`` on task ``k``. A *score dict* maps algorithm names to their
matrices (``R`` may differ between algorithms, ``K`` and the task order may not).

* :func:`normalize_scores`, :func:`best_mean_references`: per-task normalisation (0 = the untrained model,
  1 = a reference score), needed before aggregating across tasks.
* :func:`aggregate_metrics` (IQM, mean, optimality gap) and :func:`interval_estimates`: point estimates
  with stratified-bootstrap confidence intervals (rliable's ``get_interval_estimates``: runs are resampled
  with replacement *within* each task, the tasks are kept).
* :func:`probability_of_improvement`: ``P(X > Y)`` for every ordered pair of algorithms, with stratified
  independent-bootstrap CIs.
* :func:`performance_profiles`: the fraction of runs above each threshold, with CIs.
* :func:`pointwise_mean_intervals`: mean and CI of each evaluation point of a learning curve.

Every bootstrap is reproducible from its ``seed`` (see :func:`_seeded_numpy`) and per algorithm (or pair):
adding an algorithm to a comparison does not change the intervals of the others.

rliable 1.2.0 needs ``arch < 8``, and ``arch`` 7.2 does not import with pandas 3: the ``stats`` extra
(``pip install 'textgen-rl[stats]'``) pins a working set.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from text_envs.errors import ConfigError, MissingDependencyError

__all__ = [
    "AGGREGATE_METRICS",
    "DEFAULT_REPS",
    "STATS_INSTALL_COMMAND",
    "TASK_METRICS",
    "Interval",
    "TaskNormalization",
    "aggregate_metrics",
    "best_mean_references",
    "check_bootstrap",
    "interval_estimates",
    "normalize_scores",
    "performance_profiles",
    "pointwise_mean_intervals",
    "probability_of_improvement",
    "profile_thresholds",
    "require_rliable",
    "stream_seed",
    "task_metrics",
]

#: The cross-task metrics of :func:`aggregate_metrics`, in order (the optimality gap: lower is better).
AGGREGATE_METRICS: tuple[str, ...] = ("IQM", "mean", "optimality gap")
#: The per-task metrics of :func:`task_metrics`, in order.
TASK_METRICS: tuple[str, ...] = ("IQM", "mean")
#: Bootstrap resamples by default: rliable's own default for performance profiles (its interval estimates
#: default to 50,000, which takes minutes for a pairwise matrix of several algorithms on two cores).
DEFAULT_REPS = 2000
STATS_INSTALL_COMMAND = "pip install 'textgen-rl[stats]'"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float

    def complement(self) -> Interval:
        """``1 - self`` (the interval reversed): ``P(Y > X)`` from ``P(X > Y)``."""
        return Interval(1.0 - self.point, 1.0 - self.high, 1.0 - self.low)


# ------------------------------------------------------------------------------------------ rliable
def require_rliable() -> tuple[ModuleType, ModuleType]:
    """``(rliable.library, rliable.metrics)``; :class:`MissingDependencyError` naming the install command
    when rliable is missing or does not import (arch 7.2 with pandas 3 raises a TypeError on import)."""
    try:
        from rliable import library, metrics
    except (ImportError, TypeError) as error:
        raise MissingDependencyError(f"comparison statistics need rliable (with arch < 8 and pandas < 3): "
                                     f"{STATS_INSTALL_COMMAND} ({type(error).__name__}: {error})") from None
    return library, metrics


def stream_seed(seed: int, key: str) -> int:
    """A 32-bit seed for ``key``'s bootstrap, from the caller's ``seed`` and the key's name."""
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's *global* generator for the duration of the block, then restore the caller's state.

    rliable's ``StratifiedBootstrap.update_indices`` draws its resampling indices with ``np.random.choice``
    (the global generator) whatever ``random_state`` it is given, so this is the only way to make its
    intervals reproducible; restoring the state keeps the rest of the program's randomness untouched.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def check_bootstrap(reps: int, confidence: float) -> None:
    """:class:`ConfigError` unless ``reps`` is a positive int and ``confidence`` is in (0, 1)."""
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ConfigError(f"bootstrap reps must be a positive int, got {reps!r}")
    if not isinstance(confidence, (int, float)) or not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_matrix(name: str, scores: Any) -> np.ndarray:
    array = np.asarray(scores, dtype=float)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ConfigError(f"scores of {name!r} must be a (runs, tasks) matrix with at least one run and one task, "
                          f"got shape {array.shape}")
    return array


def _check_score_dict(score_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not score_dict:
        raise ConfigError("no algorithm to compare: the score dict is empty")
    checked = {name: _check_matrix(name, scores) for name, scores in score_dict.items()}
    tasks = {name: array.shape[1] for name, array in checked.items()}
    if len(set(tasks.values())) > 1:
        raise ConfigError(f"every algorithm needs scores on the same tasks, got task counts {tasks}")
    return checked


# ------------------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class TaskNormalization:
    """How one task's scores are normalised: ``untrained`` maps to 0, ``reference`` to 1.

    :param task: the task's name.
    :param untrained: the untrained model's held-out score.
    :param reference: the score that maps to 1.
    :param source: where the reference comes from (e.g. ``"best mean: grpo"`` or ``"fixed"``).
    """

    task: str
    untrained: float
    reference: float
    source: str

    @property
    def usable(self) -> bool:
        """Whether the scale is defined: both scores finite and the reference above the untrained score."""
        return bool(np.isfinite(self.untrained) and np.isfinite(self.reference) and self.reference > self.untrained)

    def apply(self, values: Any) -> np.ndarray:
        """``(values - untrained) / (reference - untrained)`` (NaN where the scale is not :attr:`usable`)."""
        array = np.asarray(values, dtype=float)
        if not self.usable:
            return np.full_like(array, np.nan)
        return (array - self.untrained) / (self.reference - self.untrained)


def best_mean_references(score_dict: Mapping[str, Any]) -> np.ndarray:
    """Per task, the best mean score (over runs) of any algorithm: ``{name: (R, K)} -> (K,)``.

    The default reference (normalised score 1) of :mod:`agents.compare`: it needs no outside knowledge of
    a task's attainable score, at the price of depending on the algorithms of the sweep.
    """
    checked = _check_score_dict(score_dict)
    return np.max(np.stack([array.mean(axis=0) for array in checked.values()]), axis=0)  # (K,)


def normalize_scores(scores: Any, untrained: Any, reference: Any) -> np.ndarray:
    """``(scores - untrained) / (reference - untrained)`` per task: ``(R, K), (K,), (K,) -> (R, K)``.

    0 is the untrained model's score, 1 the reference's. Raises :class:`ConfigError` naming the task
    index when a reference is not above its untrained score (the scale would be void or reversed).
    """
    array = _check_matrix("scores", scores)
    low = np.asarray(untrained, dtype=float).reshape(-1)  # (K,)
    high = np.asarray(reference, dtype=float).reshape(-1)  # (K,)
    if low.shape != (array.shape[1],) or high.shape != (array.shape[1],):
        raise ConfigError(f"need one untrained and one reference score per task ({array.shape[1]}), got "
                          f"{low.size} and {high.size}")
    for k, (zero, one) in enumerate(zip(low, high)):
        if not (np.isfinite(zero) and np.isfinite(one) and one > zero):
            raise ConfigError(f"task {k}: the reference score {float(one)!r} must be finite and above the untrained "
                              f"score {float(zero)!r}")
    return (array - low) / (high - low)  # (R, K)


# ------------------------------------------------------------------------------------------ metrics
def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """rliable's IQM (25 % trimmed mean of all runs x tasks), mean (of the per-task means) and optimality
    gap (``1 - mean(min(score, 1))``) of normalised scores: ``(R, K) -> (3,)`` (order: :data:`AGGREGATE_METRICS`)."""
    _, metrics = require_rliable()
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores),
                     metrics.aggregate_optimality_gap(scores)], dtype=float)


def task_metrics(scores: np.ndarray) -> np.ndarray:
    """IQM and mean of one task's runs (raw scores, no normalisation needed): ``(R, 1) -> (2,)``
    (order: :data:`TASK_METRICS`)."""
    _, metrics = require_rliable()
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)], dtype=float)


def interval_estimates(score_dict: Mapping[str, Any], func: Callable[[np.ndarray], np.ndarray],
                       reps: int = DEFAULT_REPS, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, list[Interval]]:
    """``func``'s point estimates per algorithm with percentile stratified-bootstrap CIs (rliable).

    :param score_dict: ``{name: (R, K)}``.
    :param func: ``(R, K) -> (M,)`` (e.g. :func:`aggregate_metrics`).
    :param reps: bootstrap resamples.
    :param confidence: CI coverage.
    :param seed: bootstrap seed (each algorithm draws its own stream from it and its name).
    :returns: ``{name: [Interval] * M}``.
    """
    library, _ = require_rliable()
    check_bootstrap(reps, confidence)
    checked = _check_score_dict(score_dict)
    out: dict[str, list[Interval]] = {}
    for name, scores in checked.items():
        with _seeded_numpy(stream_seed(seed, name)):
            points, intervals = library.get_interval_estimates({name: scores}, func, reps=int(reps),
                                                               confidence_interval_size=float(confidence))
        point = np.atleast_1d(points[name])  # (M,)
        bounds = np.asarray(intervals[name]).reshape(2, -1)  # (2, M)
        out[name] = [Interval(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, bounds[0], bounds[1])]
    return out


def probability_of_improvement(score_dict: Mapping[str, Any], reps: int = DEFAULT_REPS, confidence: float = 0.95,
                               seed: int = 0) -> dict[tuple[str, str], Interval]:
    """``P(X > Y)`` for every ordered pair of distinct algorithms, with stratified independent-bootstrap CIs.

    rliable's ``probability_of_improvement``: per task the Mann-Whitney ``U / (R_x R_y)`` (the probability
    that a run of ``X`` scores above a run of ``Y``, ties counting one half), averaged over tasks. Scores
    need no normalisation (it only compares runs within a task). ``P(Y > X) = 1 - P(X > Y)`` exactly, so
    each unordered pair is bootstrapped once and its reverse is the complement.

    :returns: ``{(x, y): Interval}`` for ``x != y``.
    """
    library, metrics = require_rliable()
    check_bootstrap(reps, confidence)
    checked = _check_score_dict(score_dict)
    out: dict[tuple[str, str], Interval] = {}
    for x, y in itertools.combinations(checked, 2):
        key = f"{x},{y}"
        with _seeded_numpy(stream_seed(seed, key)):
            points, intervals = library.get_interval_estimates({key: [checked[x], checked[y]]},
                                                               metrics.probability_of_improvement, reps=int(reps),
                                                               confidence_interval_size=float(confidence))
        low, high = np.asarray(intervals[key], dtype=float).reshape(-1)[:2]
        out[(x, y)] = Interval(float(points[key]), float(low), float(high))
        out[(y, x)] = out[(x, y)].complement()
    return out


def profile_thresholds(score_dict: Mapping[str, Any], points: int = 101) -> np.ndarray:
    """Thresholds ``tau`` for :func:`performance_profiles`: ``points`` values evenly spaced over every
    score and the range ``[0, 1]`` (untrained to reference), starting 5 % of that span below it so that
    every profile starts at 1 (all runs above the first threshold). ``{name: (R, K)} -> (points,)``."""
    checked = _check_score_dict(score_dict)
    values = np.concatenate([array.reshape(-1) for array in checked.values()])
    values = values[np.isfinite(values)]
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = max(1.0, float(values.max())) if values.size else 1.0
    return np.linspace(low - 0.05 * (high - low), high, points)


def performance_profiles(score_dict: Mapping[str, Any], taus: Sequence[float] | np.ndarray,
                         reps: int = DEFAULT_REPS, confidence: float = 0.95,
                         seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score distributions (rliable's performance profiles): per algorithm the fraction of its runs x tasks
    whose normalised score is above each ``tau``, with stratified-bootstrap CIs.

    :returns: ``{name: (profile (P,), low (P,), high (P,))}`` for ``P = len(taus)`` thresholds.
    """
    library, _ = require_rliable()
    check_bootstrap(reps, confidence)
    checked = _check_score_dict(score_dict)
    tau = np.asarray(taus, dtype=float).reshape(-1)  # (P,)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, scores in checked.items():
        with _seeded_numpy(stream_seed(seed, name)):
            profiles, cis = library.create_performance_profile({name: scores}, tau, reps=int(reps),
                                                               confidence_interval_size=float(confidence))
        bounds = np.asarray(cis[name], dtype=float).reshape(2, -1)  # (2, P)
        out[name] = (np.asarray(profiles[name], dtype=float), bounds[0], bounds[1])
    return out


def pointwise_mean_intervals(values: Any, reps: int = DEFAULT_REPS, confidence: float = 0.95,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across runs of each evaluation point of a learning curve and its stratified-bootstrap CI
    (rliable's bootstrap, each point a stratum): ``(R, P) -> mean (P,), low (P,), high (P,)``."""
    array = _check_matrix("curve", values)
    [intervals] = interval_estimates({"curve": array}, lambda scores: np.mean(scores, axis=0), reps, confidence,
                                     seed).values()
    return (np.array([i.point for i in intervals]), np.array([i.low for i in intervals]),
            np.array([i.high for i in intervals]))
