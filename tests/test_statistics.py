"""``agents.statistics``: rliable's estimators on small score matrices whose answers are computed by hand."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from agents import statistics as st
from text_envs.errors import ConfigError, MissingDependencyError

REPS = 2000


# ------------------------------------------------------------------------------------ normalisation
def test_normalize_scores_by_hand():
    scores = np.array([[0.0, 3.0], [1.0, 5.0]])  # (R=2, K=2)
    # task 0: untrained 0, reference 2 -> /2; task 1: untrained 1, reference 5 -> (s - 1) / 4
    out = st.normalize_scores(scores, [0.0, 1.0], [2.0, 5.0])
    assert out.tolist() == [[0.0, 0.5], [0.5, 1.0]]


def test_normalize_scores_rejects_a_void_or_reversed_scale():
    with pytest.raises(ConfigError, match=r"task 1: the reference score 1.0 must be .* above the untrained score 1.0"):
        st.normalize_scores([[0.0, 1.0]], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ConfigError, match="task 0"):
        st.normalize_scores([[0.0]], [0.5], [0.2])
    with pytest.raises(ConfigError, match="one untrained and one reference score per task"):
        st.normalize_scores([[0.0, 1.0]], [0.0], [1.0, 2.0])


def test_best_mean_references_by_hand():
    scores = {"x": [[1.0, 0.0], [3.0, 0.0]], "y": [[1.5, 4.0], [1.5, 2.0]]}
    # task 0: means x 2.0, y 1.5 -> 2.0; task 1: x 0.0, y 3.0 -> 3.0
    assert st.best_mean_references(scores).tolist() == [2.0, 3.0]


def test_task_normalization():
    scale = st.TaskNormalization("t", untrained=1.0, reference=3.0, source="fixed")
    assert scale.usable and scale.apply([1.0, 2.0, 4.0]).tolist() == [0.0, 0.5, 1.5]
    void = st.TaskNormalization("t", untrained=1.0, reference=1.0, source="best mean: x")
    assert not void.usable and np.isnan(void.apply([2.0])).all()


# ------------------------------------------------------------------------------------------ metrics
def test_aggregate_metrics_by_hand():
    scores = np.array([[0.0, 0.2], [0.4, 0.6], [0.8, 1.0], [1.2, 10.0]])  # (R=4, K=2)
    iqm, mean, gap = st.aggregate_metrics(scores)
    # IQM: the 8 values sorted 0, .2, .4, .6, .8, 1, 1.2, 10; drop 2 at each end -> mean(.4, .6, .8, 1) = .7
    assert iqm == pytest.approx(0.7)
    # mean of the task means: (0.6 + 2.95) / 2
    assert mean == pytest.approx((0.6 + 2.95) / 2)
    # optimality gap: 1 - mean(min(s, 1)) = 1 - (0 + .2 + .4 + .6 + .8 + 1 + 1 + 1) / 8
    assert gap == pytest.approx(1 - 5.0 / 8)
    assert st.task_metrics(np.array([[1.0], [2.0], [3.0], [100.0]])).tolist() == pytest.approx([2.5, 26.5])


def test_interval_of_two_runs_is_the_hand_computed_percentile_interval():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # percentiles are 0 and 1 (each end has 25 % > 2.5 % of the mass)
    [(iqm, mean)] = st.interval_estimates({"a": [[0.0], [1.0]]}, st.task_metrics, REPS).values()
    assert mean == st.Interval(0.5, 0.0, 1.0) and iqm == st.Interval(0.5, 0.0, 1.0)


def test_degenerate_intervals():
    [(_, mean)] = st.interval_estimates({"a": [[0.7]]}, st.task_metrics, 100).values()
    assert mean == st.Interval(0.7, 0.7, 0.7)
    [(_, mean)] = st.interval_estimates({"a": [[2.0], [2.0], [2.0]]}, st.task_metrics, 100).values()
    assert mean == st.Interval(2.0, 2.0, 2.0)


def test_bootstrap_is_stratified_by_task():
    # runs are resampled within each task: task 0 always [0, 0], task 1 always [1, 1] -> every resampled
    # mean is exactly 0.5 (an unstratified bootstrap over the 4 values would spread from 0 to 1)
    [intervals] = st.interval_estimates({"a": [[0.0, 1.0], [0.0, 1.0]]}, st.aggregate_metrics, REPS).values()
    assert intervals[1] == st.Interval(0.5, 0.5, 0.5)
    # task 0 [0, 1] varies, task 1 [2, 2] does not: the mean of task means is (m0 + 2) / 2, m0 in {0, .5, 1}
    [intervals] = st.interval_estimates({"a": [[0.0, 2.0], [1.0, 2.0]]}, st.aggregate_metrics, REPS).values()
    assert intervals[1] == st.Interval(1.25, 1.0, 1.5)


def test_probability_of_improvement_by_hand():
    # x = (2, 3), y = (2, 1): pairs 2-2 tie (1/2), 2>1, 3>2, 3>1 -> 3.5 / 4
    out = st.probability_of_improvement({"x": [[2.0], [3.0]], "y": [[2.0], [1.0]]}, REPS)
    assert out[("x", "y")].point == pytest.approx(0.875)
    assert out[("y", "x")].point == pytest.approx(0.125)
    assert out[("y", "x")] == out[("x", "y")].complement()
    assert 0.0 <= out[("x", "y")].low <= 0.875 <= out[("x", "y")].high <= 1.0
    # two tasks: averaged over tasks; task 0: x always above (1), task 1: x always below (0) -> 0.5
    out = st.probability_of_improvement({"x": [[5.0, 0.0], [6.0, 0.0]], "y": [[1.0, 3.0], [2.0, 4.0]]}, REPS)
    assert out[("x", "y")] == st.Interval(0.5, 0.5, 0.5)
    assert set(st.probability_of_improvement({"a": [[1.0]], "b": [[0.0]], "c": [[2.0]]}, 10)) == {
        ("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}


def test_performance_profiles_by_hand():
    scores = {"x": [[0.2, 0.9], [0.5, 1.2]]}
    taus = [0.0, 0.5, 1.0]
    profile, low, high = st.performance_profiles(scores, taus, REPS)["x"]
    # fraction of the 4 runs x tasks above tau: 4/4, 2/4 (0.9, 1.2), 1/4 (1.2)
    assert profile.tolist() == [1.0, 0.5, 0.25]
    assert (low <= profile).all() and (profile <= high).all() and low[0] == high[0] == 1.0
    # span [0, 1.2] (the scores reach 1.2), started 5 % of it (0.06) lower
    assert st.profile_thresholds(scores, points=5).tolist() == pytest.approx([-0.06, 0.255, 0.57, 0.885, 1.2])
    # span [-1, 1] (a score of -1 and the reference 1): from -1.1
    assert st.profile_thresholds({"x": [[-1.0], [0.4]]}, points=3).tolist() == pytest.approx([-1.1, -0.05, 1.0])


def test_pointwise_mean_intervals_by_hand():
    mean, low, high = st.pointwise_mean_intervals([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0]], REPS)
    assert mean.tolist() == [0.0, 2.0, 2.0]
    # point 1: resampled means of (1, 3) are 1, 2, 3 -> [1, 3]; points 0 and 2 do not vary
    assert low.tolist() == [0.0, 1.0, 2.0] and high.tolist() == [0.0, 3.0, 2.0]


# ---------------------------------------------------------------------------------- reproducibility
def test_bootstraps_are_reproducible_per_algorithm_and_leave_numpy_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = st.interval_estimates({"x": x, "y": y}, st.aggregate_metrics, 300, seed=7)
    assert (np.random.get_state()[1] == before).all()  # the caller's global generator is untouched
    assert first == st.interval_estimates({"x": x, "y": y}, st.aggregate_metrics, 300, seed=7)
    # adding an algorithm does not change another's interval; another seed does
    assert st.interval_estimates({"x": x}, st.aggregate_metrics, 300, seed=7)["x"] == first["x"]
    assert st.interval_estimates({"x": x}, st.aggregate_metrics, 300, seed=8)["x"] != first["x"]


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("reps, confidence, message", [(0, 0.95, "reps must be a positive int, got 0"),
                                                       (2.5, 0.95, "got 2.5"), (10, 1.0, "confidence"),
                                                       (10, 0.0, "confidence")])
def test_bad_bootstrap_settings(reps, confidence, message):
    with pytest.raises(ConfigError, match=message):
        st.interval_estimates({"a": [[1.0]]}, st.task_metrics, reps, confidence)


def test_bad_score_matrices():
    with pytest.raises(ConfigError, match=r"'a' must be a \(runs, tasks\) matrix .* shape \(3,\)"):
        st.interval_estimates({"a": [1.0, 2.0, 3.0]}, st.task_metrics)
    with pytest.raises(ConfigError, match="same tasks"):
        st.probability_of_improvement({"a": [[1.0, 2.0]], "b": [[1.0]]})
    with pytest.raises(ConfigError, match="empty"):
        st.interval_estimates({}, st.aggregate_metrics)


def test_missing_rliable_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # import rliable -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'textgen-rl\[stats\]'"):
        st.require_rliable()
