"""Plots of training runs (matplotlib, Agg backend: works without a display)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from text_envs.atomic import atomic_path  # noqa: E402


def read_progress(path: str | Path, x_key: str, y_keys: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Points ``(x, y)`` of each ``y_key`` from an SB3 ``progress.csv`` (rows where the key is empty are skipped)."""
    series: dict[str, list[tuple[float, float]]] = {key: [] for key in y_keys}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key in y_keys:
                if row.get(key) not in (None, "", "nan") and row.get(x_key) not in (None, ""):
                    series[key].append((float(row[x_key]), float(row[key])))
    return series


def plot_reward_curve(progress_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Score and KL versus generated tokens (``time/total_timesteps``) from ``progress.csv``."""
    series = read_progress(progress_csv, "time/total_timesteps", ("objective/score", "objective/kl"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, key, label in ((axes[0], "objective/score", "mean task score"), (axes[1], "objective/kl", "KL(pi || pi_ref)")):
        points = series[key]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        axis.set_xlabel("generated tokens")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)
    return Path(out_png)
