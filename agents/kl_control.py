"""KL-coefficient controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences")."""

from __future__ import annotations

import numpy as np

from text_envs.errors import ConfigError


class FixedKLController:
    """Keeps ``kl_coef`` constant."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Return the (unchanged) coefficient."""
        return self.value


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``kl_coef <- kl_coef * (1 + e * n_steps / horizon)``,
    where ``n_steps`` is the number of samples (here: generated tokens) since the last update.

    :param init_kl_coef: starting coefficient (> 0).
    :param target: target KL per sequence (nats, > 0).
    :param horizon: number of samples over which the error is corrected (> 0).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if not init_kl_coef > 0:
            raise ConfigError(f"adaptive KL control needs kl_coef > 0, got {init_kl_coef!r}")
        if not target > 0 or not horizon > 0:
            raise ConfigError(f"kl_target and kl_horizon must be > 0, got {target!r} and {horizon!r}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update and return the coefficient after measuring ``current_kl`` over ``n_steps`` samples."""
        if np.isfinite(current_kl):
            error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + error * n_steps / self.horizon
        return self.value
