"""SB3 callbacks used by the command line."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from stable_baselines3.common import callbacks as sb3_callbacks
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback


class ObjectiveLogger(BaseCallback):
    """Logs ``objective/score`` and ``objective/kl`` for stock SB3 algorithms (PPO, A2C, MaskablePPO).

    The sequence algorithms (TokenPPO, ...) log these themselves. Here the per-sequence KL is the
    sampled ``sum_t log pi(a_t|s_t) - sum_t log pi_ref(a_t|s_t)``, accumulated from the rollout's
    ``log_probs`` and the env's ``kl_ref_logprob_sum``.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._initial_state = state

    def _on_training_start(self) -> None:
        self._logp_sums = np.zeros(self.training_env.num_envs)
        self._scores: list[float] = []
        self._kls: list[float] = []
        if self._initial_state is not None:  # a resumed run: the sums of the episodes still running
            self._logp_sums = np.array(self._initial_state["logp_sums"], dtype=float)
            self._scores, self._kls = list(self._initial_state["scores"]), list(self._initial_state["kls"])
            self._initial_state = None

    def get_state(self) -> dict[str, Any]:
        """What a checkpoint must keep: the log-prob sums of running episodes, the rollout's scores so far."""
        return {"logp_sums": self._logp_sums.tolist(), "scores": list(self._scores), "kls": list(self._kls)}

    def _on_step(self) -> bool:
        log_probs = self.locals.get("log_probs")
        if log_probs is not None:
            self._logp_sums += log_probs.detach().float().cpu().numpy().reshape(-1)
        for i, done in enumerate(self.locals["dones"]):
            if done:
                info = self.locals["infos"][i]
                if "score" in info:
                    self._scores.append(float(info["score"]))
                    self._kls.append(float(self._logp_sums[i]) - float(info.get("kl_ref_logprob_sum", np.nan)))
                self._logp_sums[i] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        if self._scores:
            self.logger.record("objective/score", float(np.mean(self._scores)))
            kls = np.asarray(self._kls)
            if np.isfinite(kls).any():
                self.logger.record("objective/kl", float(np.nanmean(kls)))
            self.logger.record("objective/kl_coef", float(self.training_env.get_attr("kl_coef")[0]))
        self._scores, self._kls = [], []


class TokenProgressBar(ProgressBarCallback):
    """SB3's progress bar, counting generated tokens against the budget.

    The count is the algorithm's ``num_timesteps`` (one per token generated in any env slot). A rollout may
    pass the budget (the sequence algorithms finish their episodes; SB3's collect whole rollouts); the
    bar then ends at the true count instead of overshooting its total.
    """

    def _on_training_start(self) -> None:
        from tqdm import TqdmExperimentalWarning

        self._start = self.model.num_timesteps
        with warnings.catch_warnings():  # tqdm.rich (SB3's choice) announces itself as experimental
            warnings.simplefilter("ignore", TqdmExperimentalWarning)
            self.pbar = sb3_callbacks.tqdm(total=self.locals["total_timesteps"] - self._start, unit="tok")

    def _on_step(self) -> bool:
        self.pbar.update(self.model.num_timesteps - self._start - self.pbar.n)
        return True

    def _on_training_end(self) -> None:
        self.pbar.update(self.model.num_timesteps - self._start - self.pbar.n)
        if self.pbar.n > self.pbar.total:
            self.pbar.total = self.pbar.n
            progress = getattr(self.pbar, "_prog", None)  # tqdm.rich draws its own total: update it too
            if progress is not None:
                progress.update(self.pbar._task_id, total=self.pbar.total)
        super()._on_training_end()


def with_progress_bar(callback: Any) -> list[BaseCallback]:
    """``callback`` (None, one callback or a list) followed by a :class:`TokenProgressBar`."""
    if callback is None:
        return [TokenProgressBar()]
    return [*callback, TokenProgressBar()] if isinstance(callback, list) else [callback, TokenProgressBar()]
