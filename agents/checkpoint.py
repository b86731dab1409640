"""Checkpoints of a training run: everything needed to continue it exactly, written atomically.

A checkpoint is taken at the start of a rollout (just after an update, before the next token is
generated) by :class:`CheckpointCallback`, into ``<run>/checkpoint/``:

* ``model.zip``: SB3's own save (policy weights, optimizer state, LR schedule position, timestep and
  update counters, the KL controller, the last observation, the episode-info buffer...);
* ``state.pt``: what SB3 does not save: the random generators (torch, numpy, Python, the minibatch
  shuffler), the env's complete state (running episodes, per-slot generators, prompt groups, the
  reference model's KV cache), the episodes the rollout buffer carries over, the logger's pending
  values, and the caller's own extra state (e.g. the number of ``progress.csv`` rows written so far).

The folder is built next to the old one and swapped in (:func:`text_envs.atomic.atomic_directory`), so a
``SIGKILL`` at any moment, during a save included, leaves the previous complete checkpoint.
:func:`load_checkpoint` restores it into an algorithm built with the same settings; ``learn`` then
continues as if the run had never stopped: on one thread the resumed run's weights and logs are
bit-identical to an uninterrupted run's (only the wall-clock columns ``time/fps`` and
``time/time_elapsed`` differ).

Data-parallel runs (:mod:`agents.distributed`): every rank takes part in a save (each rank's own random
generators, env and buffer state are gathered), rank 0 alone writes the folder, with one state per rank
in ``state.pt``; :func:`load_checkpoint` gives each rank its own (the world size must be the same).
"""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    Logger,
    TensorBoardOutputFormat,
)
from stable_baselines3.common.save_util import load_from_zip_file

from agents import distributed
from text_envs.atomic import atomic_directory, save_pause
from text_envs.errors import ConfigError

__all__ = ["CHECKPOINT_DIR", "CheckpointCallback", "has_checkpoint", "load_checkpoint", "resumable_logger",
           "save_checkpoint"]

#: Sub-folder of a run that holds its latest checkpoint.
CHECKPOINT_DIR = "checkpoint"
#: Saved settings that describe the algorithm's construction, not its progress (never overwritten on load).
#: SB3 attributes that differ between the ranks of a data-parallel run (kept per rank in ``state.pt``).
_RANK_ATTRIBUTES = ("_last_obs", "_last_episode_starts", "_last_original_obs")
_CONSTRUCTION_KEYS = frozenset({"policy_class", "policy_kwargs", "observation_space", "action_space", "n_envs",
                                "device", "env", "_vec_normalize_env"})


def has_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds a complete checkpoint."""
    folder = Path(run) / CHECKPOINT_DIR
    return (folder / "model.zip").is_file() and (folder / "state.pt").is_file()


def _capture(algo: BaseAlgorithm, extra: dict[str, Any]) -> dict[str, Any]:
    env = algo.get_env()
    if not hasattr(env, "get_state"):
        raise ConfigError(f"checkpoints need a TextGen vec env (agents.make_text_vec_env), got {type(env).__name__}")
    shuffle = getattr(algo, "_shuffle_rng", None)
    buffer = getattr(algo, "rollout_buffer", None)
    logger = algo.logger
    return {
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "shuffle": None if shuffle is None else shuffle.bit_generator.state},
        "env": env.get_state(),
        "buffer": buffer.get_state() if hasattr(buffer, "get_state") else None,
        "logger": {"values": dict(logger.name_to_value), "counts": dict(logger.name_to_count),
                   "excluded": dict(logger.name_to_excluded)},
        "extra": extra,
        # data-parallel: model.zip is rank 0's; each rank's own last observation goes with its env's state
        **({"last_obs": {key: copy.deepcopy(getattr(algo, key, None)) for key in _RANK_ATTRIBUTES}}
           if distributed.is_distributed() else {}),
    }


def save_checkpoint(algo: BaseAlgorithm, run: Path, extra: dict[str, Any]) -> None:
    """Write the checkpoint of ``algo`` (and the caller's ``extra`` state) into ``run/checkpoint``, atomically.

    Data-parallel: call it on every rank; the ranks' states are gathered and rank 0 writes the folder."""
    state = _capture(algo, extra)
    if distributed.is_distributed():  # each rank's state travels as torch.save bytes: its tensors arrive on the CPU
        payload = io.BytesIO()
        torch.save(state, payload)
        gathered = distributed.gather_objects(payload.getvalue())
        if not distributed.is_main():
            return
        states = [torch.load(io.BytesIO(data), map_location="cpu", weights_only=False) for data in gathered]
        state = {**states[0], "ranks": states}  # rank 0's state at the top level, each rank's in "ranks"
    with atomic_directory(Path(run) / CHECKPOINT_DIR) as folder:
        algo.save(folder / "model.zip")
        save_pause()
        torch.save(state, folder / "state.pt")


def load_checkpoint(algo: BaseAlgorithm, run: Path,
                    make_logger: Callable[[dict[str, Any]], Logger] | None = None) -> dict[str, Any]:
    """Restore ``run/checkpoint`` into ``algo`` (built with the run's settings); returns the ``extra`` state.

    Call it before ``learn(..., reset_num_timesteps=False)``. ``make_logger(extra)`` builds the logger the
    run continues with (e.g. :func:`resumable_logger` keeping ``extra``'s row count); the values the
    interrupted run had recorded but not yet written go into it.

    Data-parallel: every rank loads the same weights and optimizer state and its own generators, env and
    buffer state.

    :raises ConfigError: a checkpoint written by a different number of ranks.
    """
    folder = Path(run) / CHECKPOINT_DIR
    data, params, _ = load_from_zip_file(folder / "model.zip", device=algo.device)
    algo.__dict__.update({key: value for key, value in data.items() if key not in _CONSTRUCTION_KEYS})
    algo.set_parameters(params, exact_match=True, device=algo.device)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)  # our own file
    saved_ranks = len(state["ranks"]) if "ranks" in state else 1
    if saved_ranks != distributed.world_size():
        raise ConfigError(f"the checkpoint in {str(folder)!r} was written by {saved_ranks} process(es); resume it "
                          f"with the same number (this job has {distributed.world_size()})")
    if "ranks" in state:
        state = state["ranks"][distributed.rank()]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["shuffle"] is not None:
        algo._shuffle_rng.bit_generator.state = state["rng"]["shuffle"]
    algo.get_env().set_state(state["env"])
    for key, value in state.get("last_obs", {}).items():
        setattr(algo, key, value)
    if state["buffer"] is not None:
        algo.rollout_buffer.set_state(state["buffer"])
    if make_logger is not None:
        algo.set_logger(make_logger(state["extra"]))
    if getattr(algo, "_logger", None) is not None:  # SB3 creates its default logger only in learn()
        logger = algo.logger
        logger.name_to_value.update(state["logger"]["values"])
        logger.name_to_count.update(state["logger"]["counts"])
        logger.name_to_excluded.update(state["logger"]["excluded"])
    if hasattr(algo.policy, "reset_cache"):
        algo.policy.reset_cache()
    return state["extra"]


class _ResumedCSV(CSVOutputFormat):
    """SB3's CSV output, continuing a file: its header and first ``keep_rows`` rows are kept, the rest dropped."""

    def __init__(self, filename: str, keep_rows: int) -> None:
        lines = Path(filename).read_text().splitlines(keepends=True) if Path(filename).is_file() else []
        self.file = open(filename, "w+")  # noqa: SIM115 - SB3's own format keeps the handle open
        self.keys = lines[0].rstrip("\n").split(",") if lines else []
        self.separator, self.quotechar = ",", '"'
        self.file.writelines(lines[:1 + keep_rows])
        self.file.flush()


class _RunLogger(Logger):
    """SB3's logger, counting ``time/iterations`` on from a resumed run's (SB3's ``learn`` restarts it at 1)."""

    def __init__(self, folder: str, output_formats: list, iteration_offset: int) -> None:
        super().__init__(folder, output_formats)
        self.iteration_offset = iteration_offset

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        if key == "time/iterations" and isinstance(value, int):
            value += self.iteration_offset
        super().record(key, value, exclude)


def resumable_logger(run: Path, keep_rows: int | None = None, purge_after: int | None = None,
                     iteration_offset: int = 0) -> Logger:
    """SB3's logger writing ``progress.csv`` and TensorBoard events into ``run``.

    :param keep_rows: resuming: keep this many rows of the existing ``progress.csv`` (the rows logged up to
        the checkpoint) and append after them; None starts a new file.
    :param purge_after: resuming: TensorBoard hides the events logged after this step by the interrupted
        run (``SummaryWriter(purge_step=...)``), so the curves stay one contiguous history.
    :param iteration_offset: resuming: the iterations (updates) done before, added to ``time/iterations``.
    """
    csv_path = str(Path(run) / "progress.csv")
    csv_output = CSVOutputFormat(csv_path) if keep_rows is None else _ResumedCSV(csv_path, keep_rows)
    board = TensorBoardOutputFormat(str(run))
    if purge_after is not None:
        board.writer.close()
        from torch.utils.tensorboard import SummaryWriter

        board.writer = SummaryWriter(log_dir=str(run), purge_step=purge_after + 1)
    return _RunLogger(str(run), [csv_output, board], iteration_offset)


class CheckpointCallback(BaseCallback):
    """Saves a checkpoint every ``every`` updates, at the start of the following rollout.

    :param run: the run folder (the checkpoint goes to ``run/checkpoint``).
    :param every: updates between checkpoints (>= 1).
    :param extra: returns the caller's state to store with each checkpoint (called at save time).
    :param iterations: updates already done before this ``learn`` call (a resumed run's count).
    """

    def __init__(self, run: Path, every: int, extra: Callable[[], dict[str, Any]], iterations: int = 0) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"checkpoint every must be a positive number of updates, got {every!r}")
        self.run, self.every, self.extra = Path(run), every, extra
        self.iterations = iterations
        self._first = True

    def _on_rollout_start(self) -> None:
        if self._first:  # the rollout that starts learn(): nothing new since the last checkpoint
            self._first = False
            return
        self.iterations += 1
        if self.iterations % self.every == 0:
            self.save()

    def save(self) -> None:
        """Write a checkpoint now (between rollouts)."""
        save_checkpoint(self.model, self.run, {**self.extra(), "iterations": self.iterations})

    def _on_step(self) -> bool:
        return True
