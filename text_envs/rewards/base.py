"""Reward-model protocol, registry and the validation every reward goes through.

A *reward model* scores a batch of (prompt, completion) pairs at once::

    scores = reward(prompts, completions)   # np.ndarray, float64, shape (len(prompts),)

Anything callable that way can be used (see :func:`make_reward`); registered reward models are
built by name with :func:`make_reward`, e.g. ``make_reward("sentiment")`` or
``make_reward("concepts", targets={"Write about dogs:": ["dog", "run", "park"]})``.

Every reward model returned by :func:`make_reward` is wrapped in :class:`ValidatedReward`, which
checks the scores with :func:`validate_scores`: a score that is NaN/inf, the wrong number of
scores or a value that is not a real number raises :class:`~text_envs.errors.RewardModelError`
naming the reward model and the bad value. Nothing is ever clipped or replaced silently.

Rewards that compare a completion with per-prompt *targets* (reference answers, required
words...) take ``targets=`` either as a mapping ``prompt -> list of target strings`` (what tasks
pass) or as one list applying to every prompt; :class:`TargetLookup` resolves them.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Union, runtime_checkable

import numpy as np

from text_envs.devices import resolve_device
from text_envs.errors import ConfigError, RewardModelError, UnknownRewardModelError

__all__ = [
    "RewardModel",
    "RewardInfo",
    "RewardSpec",
    "Targets",
    "ValidatedReward",
    "TargetLookup",
    "register_reward",
    "list_rewards",
    "get_reward_info",
    "make_reward",
    "validate_scores",
    "resolve_device",
    "iter_chunks",
    "check_positive_int",
    "shorten",
    "join_prompt",
]


@runtime_checkable
class RewardModel(Protocol):
    """A batched reward model.

    ``__call__(prompts, completions)`` returns one float per pair: an array-like of shape
    ``(len(prompts),)``. ``name`` identifies the model in logs and error messages.
    """

    name: str

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


#: What :func:`make_reward` accepts: a registered name, a reward model, or a plain callable
#: ``fn(prompts, completions) -> sequence of floats``.
RewardSpec = Union[str, RewardModel, Callable[[list[str], list[str]], Sequence[float]]]

#: Per-prompt targets: ``{prompt: [target, ...]}`` or one ``[target, ...]`` list for every prompt.
Targets = Union[Mapping[str, Sequence[str]], Sequence[str]]

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# small shared helpers
# --------------------------------------------------------------------------------------------


def shorten(text: str, width: int = 60) -> str:
    """``repr`` of ``text`` cut to about ``width`` characters (for error messages)."""
    text = str(text)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return repr(text)


def join_prompt(prompt: str, completion: str) -> str:
    """``prompt + completion``, with a space between them when neither side has whitespace at the
    boundary (``"I love" + "it"`` -> ``"I love it"``; ``"I love" + " it"`` is kept as is)."""
    if prompt and completion and not prompt[-1].isspace() and not completion[0].isspace():
        return prompt + " " + completion
    return prompt + completion


def check_positive_int(field: str, value: Any) -> int:
    """Return ``value`` if it is an ``int >= 1`` (not a bool), else raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{field} must be an integer >= 1, got {value!r}")
    return int(value)


def check_finite_number(field: str, value: Any, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (``> 0`` if ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")
    return float(value)


def iter_chunks(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``batch_size`` elements."""
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


# --------------------------------------------------------------------------------------------
# score validation
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """Check the output of reward model ``name`` for a batch of ``n`` and return it as float64.

    Accepted: a 1-D array-like (list, tuple, numpy array, torch tensor...) of exactly ``n`` real
    numbers (ints, floats and bools are real numbers). Rejected with :class:`RewardModelError`
    naming the reward model: a string, a mapping, a scalar, a nested/2-D structure, non-numeric
    elements (str, None, complex...), the wrong length, NaN or +/-inf (with their positions).
    Values are never clipped or replaced.
    """
    prefix = f"reward model {name!r}"
    if scores is None or isinstance(scores, (str, bytes, Mapping)):
        raise RewardModelError(
            f"{prefix} must return a sequence of {n} real numbers, got {type(scores).__name__} {_describe(scores)}"
        )
    # torch tensors (and anything else exposing detach/cpu) without importing torch
    if hasattr(scores, "detach") and hasattr(scores, "cpu"):
        try:
            scores = scores.detach().cpu().numpy()
        except Exception as exc:  # pragma: no cover - exotic tensor types
            raise RewardModelError(f"{prefix} returned a tensor that cannot be read: {exc}") from exc
    elif not hasattr(scores, "__len__") and isinstance(scores, Iterable) and not isinstance(scores, np.generic):
        scores = list(scores)  # generators, map objects...

    if isinstance(scores, np.ndarray):
        arr = scores
    else:
        if not isinstance(scores, (Sequence, np.ndarray)) and not hasattr(scores, "__array__"):
            raise RewardModelError(
                f"{prefix} must return a sequence of {n} real numbers, got {type(scores).__name__} {_describe(scores)}"
            )
        for i, value in enumerate(scores) if isinstance(scores, Sequence) else ():
            if isinstance(value, (str, bytes)) or not isinstance(value, (numbers.Real, np.number, np.bool_)) or (
                isinstance(value, (complex, np.complexfloating))
            ):
                raise RewardModelError(
                    f"{prefix} returned a non-numeric score at position {i}: "
                    f"{type(value).__name__} {_describe(value)} (expected a real number)"
                )
        try:
            arr = np.asarray(scores)
        except (TypeError, ValueError) as exc:
            raise RewardModelError(f"{prefix} returned scores that are not an array of numbers: {exc}") from exc

    if arr.ndim != 1:
        raise RewardModelError(
            f"{prefix} must return a 1-D sequence of {n} scores, got an array of shape {arr.shape}"
        )
    if arr.dtype.kind == "O" and all(
        isinstance(v, (numbers.Real, np.number, np.bool_)) and not isinstance(v, (complex, np.complexfloating))
        for v in arr.tolist()
    ):
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "biuf":
        bad = next(
            (
                (i, v)
                for i, v in enumerate(arr.tolist())
                if isinstance(v, (str, bytes, complex)) or not isinstance(v, numbers.Real)
            ),
            None,
        )
        where = f" at position {bad[0]}: {type(bad[1]).__name__} {_describe(bad[1])}" if bad else ""
        raise RewardModelError(
            f"{prefix} returned non-real scores (dtype {arr.dtype}){where}; expected real numbers"
        )
    if len(arr) != n:
        raise RewardModelError(f"{prefix} returned {len(arr)} scores for a batch of {n} (prompt, completion) pairs")
    out = arr.astype(np.float64, copy=True)
    bad_mask = ~np.isfinite(out)
    if bad_mask.any():
        positions = np.flatnonzero(bad_mask)
        shown = ", ".join(f"[{i}]={float(out[i])!r}" for i in positions[:5])
        more = f" (and {len(positions) - 5} more)" if len(positions) > 5 else ""
        raise RewardModelError(f"{prefix} returned non-finite scores at {shown}{more}")
    return out


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def _as_target_list(value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Iterable) or isinstance(value, (bytes, Mapping)):
        raise ConfigError(f"targets{where} must be a string or a list of strings, got {type(value).__name__}")
    out = tuple(value)
    for item in out:
        if not isinstance(item, str):
            raise ConfigError(
                f"targets{where} must contain strings only, got {type(item).__name__} {_describe(item)}"
            )
    if not out and not allow_empty:
        raise ConfigError(f"targets{where} is empty; give at least one target string")
    return out


class TargetLookup:
    """Per-prompt targets of a reward model.

    ``targets`` is either a mapping ``prompt -> list of target strings`` (each prompt has its own
    targets; a single string value counts as a one-element list; an empty list is accepted but
    looking that prompt up fails) or one non-empty list of strings (or a single string) used for
    every prompt. ``lookup(prompt)`` returns the prompt's targets as a
    tuple; a prompt absent from the mapping raises :class:`RewardModelError` naming the reward
    model and the prompt (shortened). The targets are copied at construction.
    """

    def __init__(self, targets: Targets, reward_name: str) -> None:
        self.reward_name = reward_name
        self._shared: tuple[str, ...] | None = None
        self._by_prompt: dict[str, tuple[str, ...]] | None = None
        if targets is None:
            raise ConfigError(
                f"reward model {reward_name!r} needs targets=: a mapping prompt -> list of strings, or one list of strings"
            )
        if isinstance(targets, Mapping):
            by_prompt: dict[str, tuple[str, ...]] = {}
            for prompt, value in targets.items():
                if not isinstance(prompt, str):
                    raise ConfigError(f"targets keys must be prompt strings, got {type(prompt).__name__} {_describe(prompt)}")
                by_prompt[prompt] = _as_target_list(value, f"[{shorten(prompt)}]", allow_empty=True)
            if not by_prompt:
                raise ConfigError(f"targets for reward model {reward_name!r} is an empty mapping")
            self._by_prompt = by_prompt
        else:
            self._shared = _as_target_list(targets, "")

    @property
    def shared(self) -> bool:
        """True when one target list applies to every prompt."""
        return self._shared is not None

    def groups(self) -> list[tuple[str, ...]]:
        """The non-empty target tuples: one if shared, else one per prompt (in mapping order)."""
        if self._shared is not None:
            return [self._shared]
        assert self._by_prompt is not None
        return [group for group in self._by_prompt.values() if group]

    def all_targets(self) -> list[str]:
        """Every distinct target string, in first-seen order."""
        seen: dict[str, None] = {}
        for group in self.groups():
            for t in group:
                seen.setdefault(t, None)
        return list(seen)

    def lookup(self, prompt: str) -> tuple[str, ...]:
        if self._shared is not None:
            return self._shared
        assert self._by_prompt is not None
        try:
            group = self._by_prompt[prompt]
        except KeyError:
            raise RewardModelError(
                f"reward model {self.reward_name!r} has no targets for prompt {shorten(prompt)} "
                f"({len(self._by_prompt)} prompts have targets); pass targets as a mapping covering every prompt "
                "or as one list for all prompts"
            ) from None
        except TypeError:  # unhashable prompt
            raise RewardModelError(
                f"reward model {self.reward_name!r}: prompt must be a string, got {type(prompt).__name__}"
            ) from None
        if not group:
            raise RewardModelError(
                f"reward model {self.reward_name!r} has an empty target list for prompt {shorten(prompt)}"
            )
        return group

    __call__ = lookup

    def for_batch(self, prompts: Sequence[str]) -> list[tuple[str, ...]]:
        """The targets of each prompt of a batch (raises on the first prompt without targets)."""
        return [self.lookup(p) for p in prompts]

    def __repr__(self) -> str:
        if self._shared is not None:
            return f"TargetLookup(shared={list(self._shared)!r})"
        return f"TargetLookup({len(self._by_prompt or {})} prompts)"


# --------------------------------------------------------------------------------------------
# validated wrapper
# --------------------------------------------------------------------------------------------


def _check_batch(name: str, prompts: Any, completions: Any) -> tuple[list[str], list[str]]:
    for label, batch in (("prompts", prompts), ("completions", completions)):
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
            raise RewardModelError(
                f"reward model {name!r} takes a list of {label}, got {type(batch).__name__}"
                + (" (wrap a single string in a list)" if isinstance(batch, str) else "")
            )
        for i, item in enumerate(batch):
            if not isinstance(item, str):
                raise RewardModelError(
                    f"reward model {name!r}: {label}[{i}] must be a string, got {type(item).__name__}"
                )
    if len(prompts) != len(completions):
        raise RewardModelError(
            f"reward model {name!r} got {len(prompts)} prompts but {len(completions)} completions"
        )
    return list(prompts), list(completions)


class ValidatedReward:
    """Wraps a reward model (or plain callable) so that its inputs and outputs are checked.

    Calling it checks that ``prompts`` and ``completions`` are equally long lists of strings,
    returns an empty array for an empty batch without calling the model, and otherwise returns
    :func:`validate_scores` of the model's output (float64, shape ``(n,)``).
    """

    def __init__(self, model: Callable[..., Any], name: str | None = None) -> None:
        if isinstance(model, ValidatedReward):
            model = model.inner
        self.inner = model
        self.name = str(name if name is not None else getattr(model, "name", None) or _callable_name(model))

    @property
    def needs_targets(self) -> bool:
        return bool(getattr(self.inner, "needs_targets", False))

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        prompts, completions = _check_batch(self.name, prompts, completions)
        n = len(prompts)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        return validate_scores(self.inner(prompts, completions), n, self.name)

    def __getattr__(self, attr: str) -> Any:
        # expose the wrapped model's extra attributes/methods (e.g. CompositeReward.breakdown)
        if attr == "inner":  # not yet set (during unpickling)
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"ValidatedReward({self.inner!r})"


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", "callable"))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardInfo:
    """A registered reward model: its ``name``, a one-line ``description``, whether it needs
    ``targets=`` (``needs_targets``) and the ``factory`` that builds it from keyword arguments."""

    name: str
    description: str
    needs_targets: bool
    factory: Callable[..., RewardModel]


_REGISTRY: dict[str, RewardInfo] = {}


def register_reward(
    name: str,
    factory: Callable[..., RewardModel] | None = None,
    *,
    description: str,
    needs_targets: bool = False,
    replace: bool = False,
) -> Any:
    """Register ``factory`` (a class or function building a reward model from kwargs) as ``name``.

    Usable directly, ``register_reward("x", XReward, description=...)``, or as a class/function
    decorator, ``@register_reward("x", description=...)``. Registering a different factory under
    a taken name raises :class:`ConfigError` unless ``replace=True`` (re-registering the same
    factory, e.g. on module reload, is allowed).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"reward name must be a non-empty string, got {name!r}")
    if not isinstance(description, str):
        raise ConfigError(f"description must be a string, got {type(description).__name__}")

    def _register(fn: F) -> F:
        if not callable(fn):
            raise ConfigError(f"factory for reward {name!r} must be callable, got {type(fn).__name__}")
        old = _REGISTRY.get(name)
        if old is not None and not replace and not _same_factory(old.factory, fn):
            raise ConfigError(
                f"reward name {name!r} is already registered (factory {old.factory!r}); pass replace=True to override"
            )
        _REGISTRY[name] = RewardInfo(name=name, description=description, needs_targets=bool(needs_targets), factory=fn)
        return fn

    if factory is None:
        return _register
    _register(factory)
    return None


def _same_factory(a: Any, b: Any) -> bool:
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None)


def list_rewards() -> list[RewardInfo]:
    """Every registered reward model, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_reward_info(name: str) -> RewardInfo:
    """The :class:`RewardInfo` registered as ``name``; :class:`UnknownRewardModelError` (listing
    the known names) otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        import difflib

        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownRewardModelError(
            f"unknown reward model {name!r}.{hint} Known reward models: {', '.join(known) or '(none)'}"
        ) from None


def _check_kwargs(info: RewardInfo, kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(info.factory)
    except (TypeError, ValueError):  # builtins without signature: let the call decide
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        params = [
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        ]
        raise ConfigError(
            f"invalid arguments for reward model {info.name!r}: {exc}. Accepted keyword arguments: {', '.join(params)}"
        ) from None


def make_reward(spec: RewardSpec, **kwargs: Any) -> ValidatedReward:
    """Build a validated reward model.

    * ``spec`` a registered name: ``factory(**kwargs)`` of that name (unknown ->
      :class:`UnknownRewardModelError`; bad kwargs or missing ``targets=`` -> :class:`ConfigError`);
    * ``spec`` a reward model or a callable ``fn(prompts, completions) -> scores``: wrapped as is;
      its name is its ``name`` attribute, else ``fn.__name__``, else ``"callable"``. ``kwargs`` are
      not allowed then (:class:`ConfigError`).

    The result is a :class:`ValidatedReward`: its scores are always a finite float64 array of
    shape ``(n,)`` or a :class:`RewardModelError` is raised.
    """
    if isinstance(spec, str):
        info = get_reward_info(spec)
        if info.needs_targets and kwargs.get("targets") is None:
            raise ConfigError(
                f"reward model {spec!r} needs targets=: a mapping prompt -> list of strings, or one list for all prompts"
            )
        _check_kwargs(info, kwargs)
        model = info.factory(**kwargs)
        return ValidatedReward(model, name=getattr(model, "name", None) or spec)
    if kwargs:
        raise ConfigError(
            f"keyword arguments ({', '.join(sorted(kwargs))}) are only accepted with a registered reward name, "
            f"not with {type(spec).__name__}"
        )
    if isinstance(spec, ValidatedReward):
        return spec
    if not callable(spec):
        raise ConfigError(
            f"reward must be a registered name, a reward model or a callable(prompts, completions), "
            f"got {type(spec).__name__} {_describe(spec)}"
        )
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not name:
        name = _callable_name(spec)
    return ValidatedReward(spec, name=name)
