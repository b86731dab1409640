"""The responder protocol: the other side of a ``TextChat-v0`` conversation (a game, a tool, a user).

A responder is any object with two methods::

    class Responder(Protocol):
        def reset(self, *, seed: int | None = None, options: dict | None = None) -> str: ...
            # the first message (the task statement)
        def respond(self, agent_text: str) -> tuple[str | None, float, bool, dict]: ...
            # (reply text or None, reward for this turn, episode done, info)

``TextChat-v0`` calls ``reset`` when an episode starts (``options={"split": "train" | "eval"}``, and a seed
drawn from the env's generator) and ``respond`` with the decoded text of each agent turn. The reply's tokens
are appended to the observation (they are never actions); the reward is paid on the agent's last token of the
turn; ``done=True`` ends the episode. A reply of ``None`` with ``done=False`` lets the agent speak again
without a reply. The env calls ``respond`` on a deep copy and keeps it only if the turn is valid, so a
responder that raises (or returns a malformed turn) leaves the episode exactly as it was.

Responders are registered by name (:func:`register_responder`); ``responder=`` of ``TextChat-v0`` takes a
registered name, ``"textarena:<GameId>"`` (any single-player TextArena game, with ``pip install
'textgen-rl[games]'``) or a zero-argument factory returning a responder (the vector env makes one per slot).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

from text_envs.errors import ConfigError, ResponderError, UnknownResponderError
from text_envs.validation import describe


@runtime_checkable
class Responder(Protocol):
    """The other side of a conversation; see the module docstring."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> str:
        """Start a new conversation; returns the first message (the task statement)."""
        ...

    def respond(self, agent_text: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        """Answer one agent turn: ``(reply or None, reward of this turn, done, info)``."""
        ...


class Turn(NamedTuple):
    """A validated :meth:`Responder.respond` result."""

    reply: str | None
    reward: float
    done: bool
    info: dict[str, Any]


ResponderFactory = Callable[[], Responder]
ResponderSpec = str | ResponderFactory

_REGISTRY: dict[str, tuple[ResponderFactory, str]] = {}


def register_responder(name: str, factory: ResponderFactory, description: str = "",
                       overwrite: bool = False) -> None:
    """Register ``factory`` (zero arguments -> a new responder) under ``name`` for ``responder=name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"a responder name must be a non-empty string without ':', got {describe(name)}")
    if not callable(factory):
        raise ConfigError(f"responder factory must be callable, got {describe(factory)}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"responder {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = (factory, description)


def unregister_responder(name: str) -> None:
    """Remove a registered responder (no error if absent)."""
    _REGISTRY.pop(name, None)


def list_responders() -> dict[str, str]:
    """Registered responder names and their one-line descriptions."""
    return {name: description for name, (_, description) in sorted(_REGISTRY.items())}


def responder_factory(spec: ResponderSpec) -> ResponderFactory:
    """The factory of a responder spec: a registered name, ``"textarena:<GameId>"`` or a factory.

    :raises UnknownResponderError: for a name that is not registered.
    :raises MissingDependencyError: for a TextArena game without ``textarena`` installed.
    """
    if isinstance(spec, str):
        if spec.startswith("textarena:"):
            from text_envs.responders.textarena import textarena_factory

            return textarena_factory(spec.split(":", 1)[1])
        if spec not in _REGISTRY:
            raise UnknownResponderError(f"unknown responder {spec!r}; registered: {sorted(_REGISTRY)} (or "
                                        "'textarena:<GameId>', or pass a zero-argument factory)")
        return _REGISTRY[spec][0]
    if isinstance(spec, type) or callable(spec):
        return spec
    raise ConfigError(f"responder must be a registered name, 'textarena:<GameId>' or a zero-argument factory "
                      f"returning a responder, got {describe(spec)}")


def build_responder(factory: ResponderFactory, label: str = "responder") -> Responder:
    """Call ``factory`` and check that the result has ``reset`` and ``respond``."""
    try:
        responder = factory()
    except Exception as error:
        raise ResponderError(f"{label} factory raised {type(error).__name__}: {error}") from error
    if not (callable(getattr(responder, "reset", None)) and callable(getattr(responder, "respond", None))):
        raise ConfigError(f"{label} factory must return an object with reset() and respond(), got "
                          f"{describe(responder)}")
    return responder


def responder_name(responder: Any) -> str:
    """A readable name of a responder for error messages."""
    return str(getattr(responder, "name", type(responder).__name__))


def check_first_message(message: Any, responder: Any) -> str:
    """Validate :meth:`Responder.reset`'s result: a non-empty string."""
    if not isinstance(message, str) or not message.strip():
        raise ResponderError(f"responder {responder_name(responder)!r}: reset() must return the first message as a "
                             f"non-empty string, got {describe(message)}")
    return message


def check_turn(result: Any, responder: Any) -> Turn:
    """Validate :meth:`Responder.respond`'s result: ``(str | None, finite real, bool, dict)``."""
    name = responder_name(responder)
    if not isinstance(result, tuple) or len(result) != 4:
        raise ResponderError(f"responder {name!r}: respond() must return (reply, reward, done, info), got "
                             f"{describe(result)}")
    reply, reward, done, info = result
    if reply is not None and not isinstance(reply, str):
        raise ResponderError(f"responder {name!r}: the reply must be a string or None, got {describe(reply)}")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) and not hasattr(reward, "__float__"):
        raise ResponderError(f"responder {name!r}: the reward must be a real number, got {describe(reward)}")
    try:
        value = float(reward)
    except (TypeError, ValueError) as error:
        raise ResponderError(f"responder {name!r}: the reward must be a real number, got {describe(reward)}") from error
    if not math.isfinite(value):
        raise ResponderError(f"responder {name!r}: the reward must be finite, got {value}")
    if not isinstance(done, bool) and type(done).__name__ != "bool_":
        raise ResponderError(f"responder {name!r}: done must be a bool, got {describe(done)}")
    if not isinstance(info, Mapping):
        raise ResponderError(f"responder {name!r}: info must be a dict, got {describe(info)}")
    return Turn(reply, value, bool(done), dict(info))
