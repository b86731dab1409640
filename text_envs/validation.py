"""The one validation layer of the TextGen environments: every argument, option and action is checked here,
once, at the boundary, before anything is mutated.

Rules (the same for every argument):

* **integers** of any integral type are accepted alike: Python ``int``, numpy integer scalars, and 0-d or
  1-element integer arrays; ``bool``, floats (even ``5.0``), strings, bytes, ``None`` and anything else are
  rejected, as are values outside the documented range (an error names the argument, the value and the
  range);
* **real numbers**: Python ``int``/``float``, numpy integer or floating scalars (and 0-d arrays), finite,
  within the documented range; ``bool`` is not a number here;
* **prompts**: non-empty ``str`` that encodes to UTF-8 (a lone surrogate such as ``"\\ud800"`` does not).

Errors are :class:`~text_envs.errors.ConfigError` (arguments and options),
:class:`~text_envs.errors.InvalidActionError` (actions) and :class:`~text_envs.errors.InvalidPromptError`
(prompts): nothing from numpy, torch or tokenizers reaches the caller for bad input.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from text_envs.errors import ConfigError, InvalidActionError, InvalidPromptError

__all__ = ["MAX_KL_COEF", "MAX_NUM_ENVS", "check_bool", "check_int", "check_prompt", "check_real", "check_seed",
           "describe", "token_id", "token_ids"]

#: Largest KL coefficient accepted: beyond it ``beta * log pi_ref`` stops being a useful penalty (and at
#: 1e308 it overflows to -inf).
MAX_KL_COEF = 1000.0
#: Largest number of parallel episodes of one vector env.
MAX_NUM_ENVS = 65_536


def describe(value: Any, limit: int = 60) -> str:
    """``repr(value)`` with its type, shortened: for error messages."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _integer(value: Any) -> int | None:
    """``value`` as a Python int if it is of an integral type (see the module rules), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.ndim <= 1 and np.issubdtype(value.dtype, np.integer):
        return int(value.reshape(()))
    return None


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None,
              error: type[Exception] = ConfigError) -> int:
    """``value`` as an int in ``[low, high]`` (either end may be None), or ``error`` naming ``name``."""
    number = _integer(value)
    bounds = f" in {low}..{high}" if low is not None and high is not None else (
        f" >= {low}" if low is not None else (f" <= {high}" if high is not None else ""))
    if number is None:
        raise error(f"{name} must be an integer{bounds}, got {describe(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise error(f"{name} must be an integer{bounds}, got {number}")
    return number


def check_real(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``), or ConfigError."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    is_number = isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if not is_number:
        raise ConfigError(f"{name} must be a real number in {interval}, got {describe(value)}")
    number = float(value)
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        raise ConfigError(f"{name} must be a finite number in {interval}, got {number!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (``True``/``False``, numpy bools), or ConfigError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {describe(value)}")


def check_seed(name: str, value: Any) -> int | None:
    """A seed: None, or an integer in ``0 .. 2**63 - 1`` (numpy's seeding refuses negative seeds)."""
    if value is None:
        return None
    return check_int(name, value, 0, 2**63 - 1)


def check_prompt(prompt: Any, name: str = "prompt") -> str:
    """A non-empty ``str`` that encodes to UTF-8, or InvalidPromptError."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError(f"{name} must be a non-empty string, got {describe(prompt)}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidPromptError(f"{name} is not valid text: {error.reason} at position {error.start} "
                                 f"({describe(prompt)})") from None
    return prompt


def token_id(action: Any, vocab_size: int) -> int:
    """One action of a single env: an integer token id in ``0 .. vocab_size - 1``."""
    number = _integer(action)
    if number is None:
        raise InvalidActionError(f"an action is one integer token id of Discrete({vocab_size}), got {describe(action)}")
    if not 0 <= number < vocab_size:
        raise InvalidActionError(f"token id {number} is outside Discrete({vocab_size}): valid ids are "
                                 f"0..{vocab_size - 1}")
    return number


def token_ids(actions: Any, batch_size: int, vocab_size: int) -> np.ndarray:
    """The actions of a vector env: ``batch_size`` integer token ids (a sequence or an array of shape
    ``(batch_size,)``), as an int64 array ``(B,)``."""
    if isinstance(actions, np.ndarray):
        array = actions
    elif isinstance(actions, (list, tuple)):
        values = [_integer(a) for a in actions]
        if any(v is None for v in values):
            bad = next(a for a, v in zip(actions, values) if v is None)
            raise InvalidActionError(f"actions must be integer token ids, got {describe(bad)} among them")
        if any(v < 0 or v >= vocab_size for v in values):  # also catches ints too large for int64
            bad_id = next(v for v in values if v < 0 or v >= vocab_size)
            raise InvalidActionError(f"token id {bad_id} is outside Discrete({vocab_size}): valid ids are "
                                     f"0..{vocab_size - 1}")
        array = np.asarray(values, dtype=np.int64)
    else:
        raise InvalidActionError(f"actions must be an array or sequence of {batch_size} token ids, got "
                                 f"{describe(actions)}")
    if array.shape != (batch_size,):
        raise InvalidActionError(f"expected actions of shape ({batch_size},), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        raise InvalidActionError(f"actions must be integer token ids, got an array of dtype {array.dtype}")
    outside = (array < 0) | (array >= vocab_size)
    if outside.any():
        raise InvalidActionError(f"token id {int(array[np.flatnonzero(outside)[0]])} is outside "
                                 f"Discrete({vocab_size}): valid ids are 0..{vocab_size - 1}")
    return array.astype(np.int64)
