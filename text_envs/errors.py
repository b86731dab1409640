"""Exception classes of ``text_envs``.

Every error raised on bad input is one of these, so callers can catch them precisely. Each
subclasses both :class:`TextEnvsError` and the builtin exception a caller would expect
(``ValueError``, ``KeyError``...), so generic handlers keep working.
"""

from __future__ import annotations


class TextEnvsError(Exception):
    """Base class of every error raised by ``text_envs``."""


class UnknownModelError(TextEnvsError, ValueError):
    """A model name is neither an alias, a local path nor a loadable hub id."""


class MissingDependencyError(TextEnvsError, ImportError):
    """An optional package is needed; the message names the command that installs it."""


class InvalidActionError(TextEnvsError, ValueError):
    """An action (token id) outside ``Discrete(vocab_size)``."""


class EpisodeFinishedError(TextEnvsError, RuntimeError):
    """``step()`` was called on an episode that already ended; call ``reset()`` first."""


class InvalidPromptError(TextEnvsError, ValueError):
    """A prompt that cannot start an episode (e.g. empty)."""


class RewardModelError(TextEnvsError, ValueError):
    """A reward model returned NaN/inf, the wrong length or the wrong type."""


class UnknownRewardModelError(TextEnvsError, KeyError):
    """A reward-model name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(TextEnvsError, KeyError):
    """A task name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(TextEnvsError, ValueError):
    """An invalid configuration value (the message names the field, the value and what was expected)."""


class FeedbackFormatError(TextEnvsError, ValueError):
    """A malformed line in a human-feedback JSONL file (the message gives file:line and the reason)."""


class EnvClosedError(TextEnvsError, RuntimeError):
    """``reset``/``step``/``render`` on an env after ``close()`` (its reference model is released)."""


class InvalidObservationError(TextEnvsError, ValueError):
    """An observation a policy cannot read: ids that are not integers or lie outside the vocabulary."""


class ResponderError(TextEnvsError, ValueError):
    """A responder (the other side of a ``TextChat-v0`` conversation) raised or returned a malformed turn;
    the step that called it was not applied."""


class UnknownResponderError(TextEnvsError, KeyError):
    """A responder name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
