"""One training run in a run folder, start to finish, crash-safe: what ``textgen-rl train`` does.

Folder layout (every file is written atomically; see :mod:`text_envs.atomic`)::

    run.json          the run's settings (written first; ``--resume`` reads them back)
    checkpoint/       the latest checkpoint, every ``checkpoint_every`` updates (agents.checkpoint);
                      removed once the run is complete
    progress.csv      SB3's log, one row per rollout, one contiguous history across resumes
    events.out.*      TensorBoard events (a resumed run purges the interrupted run's events after its
                      checkpoint)
    model.zip, hf/, reward_curve.png, eval.json     the results; eval.json is written last and marks the
                      run complete

:func:`run_training` starts a run in a new (or empty) folder, or resumes one: from its checkpoint when
it has one, from the start otherwise. A resumed run continues to the original budget and ends with
the same weights, ``progress.csv`` rows and step counts as an uninterrupted one (bit-identical on one
thread; the wall-clock columns ``time/fps`` and ``time/time_elapsed`` excepted).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from text_envs.atomic import (
    atomic_directory,
    atomic_path,
    save_pause,
    write_json_atomic,
)
from text_envs.errors import ConfigError

__all__ = ["RUN_FILE", "RunSettings", "RunOutcome", "read_settings", "run_training"]

#: The settings file of a run folder.
RUN_FILE = "run.json"
#: The file that marks a run complete (written last).
DONE_FILE = "eval.json"


@dataclass
class RunSettings:
    """Everything that defines a ``textgen-rl train`` run (the command-line flags)."""

    task: str = "sentiment"
    algo: str = "token-ppo"
    model: str = "tiny"
    reward_model: str | None = None
    max_new_tokens: int | None = None
    device: str = "auto"
    threads: int | None = None
    timesteps: int = 32_768
    kl_coef: float = 0.05
    kl_target: float | None = None
    num_envs: int = 16
    learning_rate: float | None = None
    seed: int = 0
    eval_n: int = 64
    eval_seed: int = 1234
    checkpoint_every: int = 10
    lora_r: int | None = None  # LoRA rank (None: full fine-tuning)
    lora_alpha: float | None = None
    lora_targets: str = "all-linear"
    merge: bool = False  # also export the LoRA adapters merged into a plain model (hf-merged/)
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def lora(self) -> dict[str, Any] | None:
        """The LoRA settings of the run (None: full fine-tuning)."""
        if self.lora_r is None:
            return None
        targets = self.lora_targets if self.lora_targets == "all-linear" else self.lora_targets.split(",")
        return {"r": self.lora_r, "alpha": self.lora_alpha, "target_modules": targets}  # room for later settings; compared like the others


@dataclass
class RunOutcome:
    """What :func:`run_training` did."""

    summary: dict[str, Any]  # the content of eval.json
    resumed_from: int | None  # the generated-token count of the checkpoint resumed from (None: a fresh start)
    before: Any
    after: Any


def read_settings(run: Path) -> RunSettings:
    """The settings stored in ``run/run.json``."""
    path = Path(run) / RUN_FILE
    try:
        stored = json.loads(path.read_text())
        known = {f.name for f in fields(RunSettings)}
        return RunSettings(**{k: v for k, v in stored["settings"].items() if k in known})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{str(run)!r} is not a resumable run folder: cannot read {RUN_FILE} ({error})") from None


def _csv_rows(run: Path) -> int:
    path = run / "progress.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def _clear(run: Path) -> None:
    """Remove everything but run.json (a resumed run that never reached its first checkpoint starts over)."""
    for entry in run.iterdir():
        if entry.name == RUN_FILE:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def run_training(settings: RunSettings, out: Path, resume: bool = False,
                 report: Callable[[str, Any], None] | None = None) -> RunOutcome:
    """Train (or resume) the run ``settings`` in folder ``out``; see the module docstring.

    :param report: called as ``report("before" | "after", EvalResult)`` when an evaluation is done.
    """
    from agents.algorithm_registry import make_algorithm
    from agents.algos.base import SequenceOnPolicyAlgorithm
    from agents.callbacks import ObjectiveLogger, TokenProgressBar
    from agents.checkpoint import (
        CHECKPOINT_DIR,
        CheckpointCallback,
        has_checkpoint,
        load_checkpoint,
        resumable_logger,
    )
    from agents.evaluation import EXPORT_METADATA, EvalResult, evaluate_model
    from agents.plotting import plot_reward_curve
    from text_envs.models import configure_threads
    from text_envs.rewards.learned import parse_reward_spec

    threads = configure_threads(settings.threads)
    reward_model, reward_kwargs = parse_reward_spec(settings.reward_model) if settings.reward_model else (None, None)
    env_kwargs = {"model": settings.model, "task": settings.task, "reward_model": reward_model,
                  "reward_kwargs": reward_kwargs, "kl_coef": settings.kl_coef, "max_new_tokens": settings.max_new_tokens,
                  "device": settings.device}
    algo = make_algorithm(settings.algo, env_kwargs=env_kwargs, num_envs=settings.num_envs, model=settings.model,
                          seed=settings.seed, device=settings.device, learning_rate=settings.learning_rate,
                          kl_target=settings.kl_target, lora=settings.lora(),
                          gradient_checkpointing=settings.gradient_checkpointing)
    eval_kwargs = {"task": settings.task, "n": settings.eval_n, "seed": settings.eval_seed, "env": algo.env.env}
    resumed_from = None
    if resume and has_checkpoint(out):
        extra = load_checkpoint(algo, out, lambda saved: resumable_logger(out, saved["csv_rows"], algo.num_timesteps,
                                                                          saved["iterations"]))
        resumed_from = int(algo.num_timesteps)
        before = EvalResult(**extra["before"])
        iterations, seconds_before = int(extra["iterations"]), float(extra["train_seconds"])
        objective_state = extra.get("objective")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _clear(out)
        write_json_atomic(out / RUN_FILE, {"settings": asdict(settings)})
        before = evaluate_model(algo.policy.lm, **eval_kwargs)
        algo.set_logger(resumable_logger(out))
        iterations, seconds_before, objective_state = 0, 0.0, None
    if report is not None:
        report("before", before)
    # sequence algorithms (TokenPPO...) log objective/* themselves; stock SB3 ones get it from a callback
    objective = None if isinstance(algo, SequenceOnPolicyAlgorithm) else ObjectiveLogger(objective_state)
    started = time.time()

    def extra_state() -> dict[str, Any]:
        return {"before": before.to_dict(), "csv_rows": _csv_rows(out),
                "train_seconds": seconds_before + time.time() - started,
                "objective": objective.get_state() if objective is not None else None}

    callbacks = [c for c in (objective, CheckpointCallback(out, settings.checkpoint_every, extra_state, iterations)
                             if settings.checkpoint_every else None, TokenProgressBar()) if c is not None]
    remaining = settings.timesteps - int(algo.num_timesteps)
    if remaining > 0:
        algo.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=resumed_from is None)
    seconds = seconds_before + time.time() - started
    generated = int(algo.num_timesteps)
    after = evaluate_model(algo.policy.lm, **eval_kwargs)
    if report is not None:
        report("after", after)
    with atomic_path(out / "model.zip") as temporary:
        algo.save(temporary)
        save_pause()
    exports = [("hf", False)] + ([("hf-merged", True)] if settings.merge and settings.lora_r is not None else [])
    for folder, merge in exports:
        with atomic_directory(out / folder) as temporary:
            algo.policy.save_pretrained(temporary, merge=merge)
            write_json_atomic(temporary / EXPORT_METADATA, {"base_model": settings.model, "task": settings.task,
                                                            "algo": settings.algo, "lora": settings.lora(),
                                                            "merged": merge})
    plot_reward_curve(out / "progress.csv", out / "reward_curve.png",
                      f"{settings.algo} on {settings.task} ({settings.model})")
    summary = {"task": settings.task, "algo": settings.algo, "model": settings.model, "seed": settings.seed,
               "budget": settings.timesteps, "timesteps": generated, "seconds": round(seconds, 3),
               "tokens_per_second": round(generated / max(seconds, 1e-9), 1), "threads": threads,
               "eval_seed": settings.eval_seed, "resumed_from": resumed_from, "lora": settings.lora(),
               "learning_rate": float(algo.learning_rate) if isinstance(algo.learning_rate, (int, float)) else None,
               "before": before.to_dict(), "after": after.to_dict()}
    write_json_atomic(out / DONE_FILE, summary)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    algo.env.close()
    return RunOutcome(summary=summary, resumed_from=resumed_from, before=before, after=after)
