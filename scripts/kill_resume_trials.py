"""SIGKILL real ``textgen-rl train`` / ``compare`` processes at random moments (during saves included), resume
them, and check that the result equals an uninterrupted run's.

    python scripts/kill_resume_trials.py --trials 20 [--algos token-ppo,grpo,ppo] [--compare-trials 4]

For every algorithm: one uninterrupted run, then ``--trials`` runs killed at a random moment (a third of
them while a checkpoint is being written, a third while the final ``model.zip`` is being written; the
rest at a uniformly random time), each resumed with ``textgen-rl train --resume`` (killed again at
random with probability 1/2) until it completes. A trial passes when the final weights are
bit-identical, ``progress.csv`` has the same rows (wall-clock columns aside), the step count and the
after-training evaluation match, and ``model.zip`` loads. ``tests/test_resume.py`` runs a few trials
of each kind; this script runs more, for the README's reliability section.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WALL_CLOCK_COLUMNS = ("time/fps", "time/time_elapsed")
TRAIN_ARGS = ["--timesteps", "1024", "--num-envs", "4", "--eval-n", "4", "--max-new-tokens", "8",
              "--checkpoint-every", "1"]
COMPARE_ARGS = ["--task", "sentiment", "--algos", "token-ppo,grpo", "--seeds", "1", "--timesteps", "512",
                "--eval-n", "4", "--num-envs", "4", "--checkpoint-every", "1", "--no-plot"]
PAUSE_S = "0.5"


def environment(pause: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TEXTGEN_RL_SAVE_PAUSE_S", None)
    if pause:
        env["TEXTGEN_RL_SAVE_PAUSE_S"] = PAUSE_S
    return env


def start(args: list[str], pause: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agents.cli", *args], cwd=REPO, env=environment(pause),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(args: list[str], timeout: float = 600) -> None:
    result = subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=REPO, env=environment(False),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"textgen-rl {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL ``process`` as soon as ``condition()`` holds; False if it exited first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.wait()
    return False


def kill_after(process: subprocess.Popen, seconds: float) -> bool:
    started = time.monotonic()
    return kill_when(process, lambda: time.monotonic() - started >= seconds)


def saving(folder: Path, name: str, after_complete: bool = True) -> Callable[[], bool]:
    """True while ``folder/name`` is being written (its temporary sibling exists); with ``after_complete``,
    only once a complete ``name`` already exists (so the kill hits a replacement)."""
    def condition() -> bool:
        if not folder.is_dir() or (after_complete and not (folder / name).exists()):
            return False
        return any(entry.name.startswith(f".{name}.tmp-") for entry in folder.iterdir())
    return condition


def progress_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS} for row in csv.DictReader(handle)]


def run_fingerprint(run: Path) -> dict:
    """What must match between an uninterrupted and a resumed run."""
    summary = json.loads((run / "eval.json").read_text())
    return {"weights": (run / "hf" / "model.safetensors").read_bytes(), "progress": progress_rows(run / "progress.csv"),
            "timesteps": summary["timesteps"], "after": summary["after"], "before": summary["before"]}


def model_zip_loads(run: Path, algo: str) -> bool:
    code = ("import sys; from agents.algorithm_registry import ALGORITHMS; "
            f"ALGORITHMS[{algo!r}].load_class().load(sys.argv[1], device='cpu')")
    return subprocess.run([sys.executable, "-c", code, str(run / "model.zip")], cwd=REPO, env=environment(False),
                          capture_output=True).returncode == 0


def train_trial(algo: str, folder: Path, kind: str, rng: random.Random, reference: dict, model: str = "tiny") -> str:
    """One killed-and-resumed ``train`` run; returns the outcome ('pass' or what differed)."""
    args = ["train", "--algo", algo, "--model", model, *TRAIN_ARGS, "--out", str(folder)]
    process = start(args, pause=kind != "random")
    if kind == "checkpoint":
        killed = kill_when(process, saving(folder, "checkpoint"))
    elif kind == "final":
        killed = kill_when(process, saving(folder, "model.zip", after_complete=False))
    else:
        killed = kill_after(process, rng.uniform(2.0, 8.0))
    resumes = 0
    while not (folder / "eval.json").is_file() or (folder / "checkpoint").exists():
        resumes += 1
        if resumes > 6:
            return "did not complete"
        # killed before run.json was written: nothing to resume, the same command starts over
        command = ["train", "--resume", str(folder)] if (folder / "run.json").is_file() else args
        if rng.random() < 0.5 and resumes == 1:
            kill_after(start(command), rng.uniform(2.0, 8.0))
        else:
            finish(command)
    result = run_fingerprint(folder)
    for key in ("weights", "progress", "timesteps", "after", "before"):
        if result[key] != reference[key]:
            return f"{key} differ"
    if not model_zip_loads(folder, algo):
        return "model.zip does not load"
    return f"pass ({'killed' if killed else 'finished before the kill'}, {resumes} resume(s))"


def compare_trial(folder: Path, rng: random.Random, reference: list[dict], model: str = "tiny") -> str:
    """A killed-and-resumed ``compare``; its runs must equal the uninterrupted comparison's."""
    args = ["compare", "--model", model, *COMPARE_ARGS, "--out", str(folder)]
    kill_after(start(args), rng.uniform(4.0, 14.0))
    finish(args)
    got = [{k: r[k] for k in ("algo", "seed", "timesteps", "score_mean", "kl_mean", "curve")}
           for r in json.loads((folder / "runs.json").read_text())]
    return "pass" if got == reference else "runs differ"


def compare_reference(folder: Path, model: str = "tiny") -> list[dict]:
    finish(["compare", "--model", model, *COMPARE_ARGS, "--out", str(folder)])
    return [{k: r[k] for k in ("algo", "seed", "timesteps", "score_mean", "kl_mean", "curve")}
            for r in json.loads((folder / "runs.json").read_text())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="killed runs per algorithm")
    parser.add_argument("--algos", default="token-ppo,grpo,ppo")
    parser.add_argument("--compare-trials", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    outcomes: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as scratch:
        root = Path(scratch)
        for algo in args.algos.split(","):
            finish(["train", "--algo", algo, "--model", "tiny", *TRAIN_ARGS, "--out", str(root / f"{algo}-reference")])
            reference = run_fingerprint(root / f"{algo}-reference")
            for trial in range(args.trials):
                kind = ("checkpoint", "final", "random")[trial % 3]
                outcome = train_trial(algo, root / f"{algo}-{trial}", kind, rng, reference)
                outcomes.append((f"train {algo}", kind, outcome))
                print(f"train {algo:<10} kill {kind:<10} -> {outcome}", flush=True)
        if args.compare_trials:
            reference_runs = compare_reference(root / "compare-reference")
            for trial in range(args.compare_trials):
                outcome = compare_trial(root / f"compare-{trial}", rng, reference_runs)
                outcomes.append(("compare", "random", outcome))
                print(f"compare             kill random     -> {outcome}", flush=True)
    passed = sum(o.startswith("pass") for _, _, o in outcomes)
    print(f"\n{passed}/{len(outcomes)} trials passed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
