"""Single-player `TextArena <https://github.com/LeonGuertler/TextArena>`_ games as ``TextChat-v0`` responders.

``responder="textarena:<GameId>"`` (``pip install 'textgen-rl[games]'``) plays one single-player TextArena game
per episode: :meth:`TextArenaResponder.reset` returns the game's opening observation (its rules and first board),
each agent turn is sent to the game as the player's action, and the game's answer (feedback, the new board) is
the reply. The game's reward for player 0 is paid on the turn that ends the game; TextArena's single-player
games have no per-turn rewards (their step info is always empty and ``state.rewards`` is only set at the end),
so every other turn pays 0.0. TextArena ends an episode after two invalid moves in a row (the first one gets a
warning), so untrained agents see short episodes.

Which games run offline
-----------------------
Probed with textarena 0.7.4 on Python 3.11 without network: a few seeded episodes of random short texts and of
moves in each game's own format, for every single-player game in the registry (every difficulty variant too).

:data:`OFFLINE_GAMES` run fully offline: 2048, Bandit, Blackjack, Countdown, Crosswords (its clues ship with
textarena), Cryptarithm, FifteenPuzzle, FrozenLake, GuessTheNumber, LightsOut, LogicPuzzle (puzzles ship with
textarena), Mastermind, Minesweeper, PegJump, RushHour, Secretary, Set, Slitherlink, Sokoban, Sudoku,
ThreeCardMonte and TowerOfHanoi, with all their difficulty variants (``Sudoku-v0-hard``, ``2048-v0-3x3``...;
``Sudoku-v0-hard`` and ``Sokoban-v0-medium`` take seconds to generate a board).

:data:`UNAVAILABLE_GAMES` (id -> reason) do not:

* Hangman, WordLadder, Wordle, WordSearch need NLTK corpora (``words``; Wordle also
  ``averaged_perceptron_tagger_eng``) that textarena downloads with ``nltk.download`` when the game module is
  imported; offline the download fails and the game raises ``LookupError``. They work once the data is
  installed (``python -m nltk.downloader words averaged_perceptron_tagger_eng``, which needs network once).
* GuessWho and TwentyQuestions answer the player's questions with an LLM game master
  (``ta.agents.OpenRouterAgent("openai/gpt-4o")``, created in the constructor): they need
  ``OPENROUTER_API_KEY`` and network on every question.
* Klondike cannot be imported: its ``env.py`` (line 119) is a ``SyntaxError`` on every Python version
  (an ``elif`` after an ``else``), a textarena 0.7.4 bug.
* UltimateTexasHoldem's ``env.py`` nests same-quote f-strings (PEP 701), a ``SyntaxError`` before Python 3.12;
  on Python 3.12+ it runs offline and is in :data:`OFFLINE_GAMES`.
* BabyAiText needs ``gym`` and ``babyai_text`` (not on PyPI), and its ``reset`` passes ``min_players`` to
  ``ta.State``, which textarena 0.7.4 does not accept.

Multi-player TextArena games (chess, poker, negotiation...) are refused: ``TextChat-v0`` has one agent.

Design notes
------------
* The ``-raw`` registry variant is played whatever the caller writes (``"Sudoku-v0"``, ``"Sudoku-v0-raw"``,
  ``"Sudoku-v0-train"``): TextArena's default wrappers are made for a stateless LLM call, so its observation
  wrapper re-sends the whole history every turn (the chat already holds it) and its action wrapper rewrites the
  agent's text (adds brackets), which would hide what the policy actually produced.
* The echo of the agent's own action is dropped from the reply (the conversation already holds it); every game
  message is kept, joined by blank lines.
* TextArena games draw from the global :mod:`random` (``State`` even calls ``random.seed(seed)``). Each responder
  keeps its own generator state and swaps it in only while the game runs, so the caller's global random state
  is untouched, a seed fully determines an episode, and a :func:`copy.deepcopy` continues exactly like the
  original (the env steps a deep copy to stay transactional). A game that cannot be deep-copied is rebuilt by
  replaying its seed and the agent turns so far.
* textarena's prints (puzzle generators, NLTK download errors) and warnings during a game call are captured and
  logged at DEBUG on this module's logger. Both the random swap and the capture are process-wide while a game
  call runs: do not step responders from several threads at once.
* textarena 0.7.4's Countdown, Cryptarithm, Slitherlink and ThreeCardMonte call ``set_invalid_move(reward,
  reason)`` and ``add_observation(player_id, action, type)`` with their arguments swapped: the player would be
  told "Reason: 0.0" instead of the move format, and the final reward would be a string. The responder repairs
  these calls on the game's state (only calls whose argument types show the swap are changed).
* ``options={"split": ...}`` is accepted and ignored: TextArena has no train/eval split, so train and eval
  episodes differ only by seed (games with a fixed puzzle pool, e.g. LogicPuzzle, Crosswords, repeat puzzles).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import io
import logging
import math
import os
import random
import re
import secrets
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from text_envs.errors import (
    ConfigError,
    MissingDependencyError,
    ResponderError,
    TextEnvsError,
    UnknownResponderError,
)

__all__ = [
    "OFFLINE_GAMES",
    "PROBED_TEXTARENA_VERSION",
    "UNAVAILABLE_GAMES",
    "TextArenaResponder",
    "single_player_games",
    "textarena_factory",
]

logger = logging.getLogger(__name__)

#: The textarena version :data:`OFFLINE_GAMES` and :data:`UNAVAILABLE_GAMES` were probed with (Python 3.11).
PROBED_TEXTARENA_VERSION = "0.7.4"

#: Single-player games (base ids) that run without network, API keys or extra data. Their difficulty variants
#: (``Sudoku-v0-hard``, ``2048-v0-3x3``...) run offline too.
OFFLINE_GAMES: tuple[str, ...] = (
    "2048-v0",
    "Bandit-v0",
    "Blackjack-v0",
    "Countdown-v0",
    "Crosswords-v0",
    "Cryptarithm-v0",
    "FifteenPuzzle-v0",
    "FrozenLake-v0",
    "GuessTheNumber-v0",
    "LightsOut-v0",
    "LogicPuzzle-v0",
    "Mastermind-v0",
    "Minesweeper-v0",
    "PegJump-v0",
    "RushHour-v0",
    "Secretary-v0",
    "Set-v0",
    "Slitherlink-v0",
    "Sokoban-v0",
    "Sudoku-v0",
    "ThreeCardMonte-v0",
    "TowerOfHanoi-v0",
)

_NLTK_WORDS = ("needs the NLTK corpus 'words', which textarena fetches with nltk.download() when the game is "
               "imported; offline that fails and the game raises LookupError (install it once with "
               "`python -m nltk.downloader words`)")

#: Single-player games (base ids; their variants share the reason) that do not run offline here -> why.
UNAVAILABLE_GAMES: dict[str, str] = {
    "Hangman-v0": _NLTK_WORDS,
    "WordLadder-v0": _NLTK_WORDS,
    "WordSearch-v0": _NLTK_WORDS,
    "Wordle-v0": ("needs the NLTK data 'words' and 'averaged_perceptron_tagger_eng', which textarena fetches "
                  "with nltk.download() when the game is imported; offline that fails and the game raises "
                  "LookupError (install them once with `python -m nltk.downloader words "
                  "averaged_perceptron_tagger_eng`)"),
    "GuessWho-v0": ("an LLM game master answers the questions: the constructor creates "
                    "ta.agents.OpenRouterAgent('openai/gpt-4o'), which needs OPENROUTER_API_KEY, and every "
                    "question is a network call to OpenRouter"),
    "TwentyQuestions-v0": ("an LLM game master answers the questions: the constructor creates "
                           "ta.agents.OpenRouterAgent('openai/gpt-4o'), which needs OPENROUTER_API_KEY, and every "
                           "question is a network call to OpenRouter"),
    "Klondike-v0": ("textarena 0.7.4 bug: textarena/envs/Klondike/env.py line 119 is a SyntaxError on every Python "
                    "version (an 'elif' after an 'else'), so the game cannot be imported"),
    "UltimateTexasHoldem-v0": ("textarena/envs/UltimateTexasHoldem/env.py nests same-quote f-strings (PEP 701), a "
                               "SyntaxError before Python 3.12, so the game cannot be imported on Python 3.10/3.11"),
    "BabyAiText-v0": ("needs the packages gym and babyai_text (babyai-text is not on PyPI), and its reset() passes "
                      "min_players/max_players to ta.State, which textarena 0.7.4 rejects (TypeError)"),
}

if sys.version_info >= (3, 12):  # UltimateTexasHoldem's PEP 701 f-strings parse there (probed on Python 3.12.1)
    OFFLINE_GAMES = (*OFFLINE_GAMES, "UltimateTexasHoldem-v0")
    del UNAVAILABLE_GAMES["UltimateTexasHoldem-v0"]

_INSTALL_HINT = "pip install 'textgen-rl[games]'"
_WRAPPER_SUFFIXES = ("-raw", "-train")
_BASE_ID = re.compile(r"^(.*?-v\d+)")


# --------------------------------------------------------------------------------------------------------------
# textarena access
# --------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(label: str) -> Iterator[None]:
    """Capture what textarena prints and warns while the block runs; log it at DEBUG."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            captured = out.getvalue() + err.getvalue()
            if captured.strip():
                logger.debug("textarena output during %s:\n%s", label, captured.rstrip())
            for warning in caught:
                logger.debug("textarena warning during %s: %s", label, warning.message)


@contextlib.contextmanager
def _keep_global_random() -> Iterator[None]:
    """Restore the global :mod:`random` state after the block (importing a game module may draw from it)."""
    outer = random.getstate()
    try:
        yield
    finally:
        random.setstate(outer)


def _import_textarena() -> Any:
    """Import :mod:`textarena`, or raise :class:`MissingDependencyError` naming the install command."""
    try:
        with _quiet("import"), _keep_global_random():
            import textarena
    except ImportError as error:
        raise MissingDependencyError(f"TextArena games need the 'textarena' package ({error}); install it with "
                                     f"`{_INSTALL_HINT}`") from error
    return textarena


def _registry() -> dict[str, Any]:
    return _import_textarena().envs.registration.ENV_REGISTRY


def _public_ids(registry: dict[str, Any]) -> list[str]:
    """Registered ids without the wrapper-variant suffixes."""
    return sorted(gid for gid in registry if not gid.endswith(_WRAPPER_SUFFIXES))


def _base_id(game_id: str) -> str:
    """``"Sudoku-v0-hard"`` -> ``"Sudoku-v0"`` (TextArena ids are ``<Name>-v<k>[-variant]``)."""
    match = _BASE_ID.match(game_id)
    return match.group(1) if match else game_id


@functools.cache
def _state_class(entry_point: Any) -> str | None:
    """The ``*State`` class a game's source uses (``SinglePlayerState``...), read without importing it.

    Importing a game module has side effects (NLTK downloads, syntax errors), so the player count is read from
    the module's source: TextArena's single-player games build a ``ta.SinglePlayerState``.
    """
    if not isinstance(entry_point, str):
        return None
    module = entry_point.split(":", 1)[0]
    textarena = _import_textarena()
    root = os.path.dirname(os.path.dirname(textarena.__file__))
    path = os.path.join(root, *module.split(".")) + ".py"
    try:
        with open(path, encoding="utf-8") as file:
            source = file.read()
    except OSError:
        return None
    if "max_players=1" in source:  # BabyAiText builds a plain ta.State limited to one player
        return "SinglePlayerState"
    names = re.findall(r"\b(\w*PlayerState)\b", source)
    return names[0] if names else None


def _resolve(game_id: str) -> tuple[str, str]:
    """``(public id, registry id to make)`` of a single-player game, or a typed error."""
    if not isinstance(game_id, str) or not game_id.strip():
        raise ConfigError(f"a TextArena game id must be a non-empty string like 'Sudoku-v0', got {game_id!r}")
    return _resolve_id(game_id)


@functools.cache
def _resolve_id(game_id: str) -> tuple[str, str]:
    registry = _registry()
    public = game_id.strip()
    for suffix in _WRAPPER_SUFFIXES:
        if public.endswith(suffix) and public[: -len(suffix)] in registry:
            public = public[: -len(suffix)]
    if public not in registry:
        singles = single_player_games()
        lowered = {gid.lower(): gid for gid in _public_ids(registry)}
        matches = ([lowered[public.lower()]] if public.lower() in lowered else
                   difflib.get_close_matches(public, singles, n=5, cutoff=0.6)
                   or difflib.get_close_matches(public, _public_ids(registry), n=5, cutoff=0.6))
        hint = f"did you mean {', '.join(repr(m) for m in matches)}? " if matches else ""
        raise UnknownResponderError(f"unknown TextArena game {game_id!r}; {hint}single-player games that run "
                                    f"offline: {', '.join(OFFLINE_GAMES)}")
    spec = registry[public]
    state = _state_class(spec.entry_point)
    if state != "SinglePlayerState":
        kind = f"uses {state}" if state else "is not a single-player game"
        raise ConfigError(f"TextArena game {public!r} {kind}: TextChat-v0 plays single-player games only "
                          f"(num_players=1); offline single-player games: {', '.join(OFFLINE_GAMES)}")
    raw = public + "-raw"
    return public, raw if raw in registry else public


def single_player_games() -> list[str]:
    """Every registered single-player TextArena game id (variants included, wrapper suffixes excluded)."""
    registry = _registry()
    return [gid for gid in _public_ids(registry) if _state_class(registry[gid].entry_point) == "SinglePlayerState"]


def _load_error(game_id: str, error: BaseException) -> TextEnvsError:
    """A typed error for a game that cannot be built here."""
    known = UNAVAILABLE_GAMES.get(_base_id(game_id))
    detail = f"{type(error).__name__}: {str(error).strip()}"
    why = f" ({known})" if known else ""
    if isinstance(error, LookupError) and "nltk" in str(error).lower():
        return MissingDependencyError(f"TextArena game {game_id!r} needs NLTK data that is not installed{why}; "
                                      f"{detail}")
    if isinstance(error, ImportError):
        return MissingDependencyError(f"TextArena game {game_id!r} needs a package that is not installed{why}; "
                                      f"{detail}")
    return ConfigError(f"TextArena game {game_id!r} cannot be played here{why}; {detail}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------------------
# repairs of textarena 0.7.4 argument-order bugs (installed on a game's state after each reset)
# --------------------------------------------------------------------------------------------------------------

class _SetInvalidMoveFix:
    """``state.set_invalid_move`` that accepts the swapped ``(reward, reason)`` order some games use.

    A plain object (not a closure) so that :func:`copy.deepcopy` of the game re-targets it at the copied state.
    """

    def __init__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 2 and not kwargs and _is_real(args[0]) and isinstance(args[1], str):
            args = (args[1], float(args[0]))  # (reward, reason) -> (reason, reward)
        return type(self.state).set_invalid_move(self.state, *args, **kwargs)


class _AddObservationFix:
    """``state.add_observation`` that accepts the swapped ``(from_id, message, type)`` order some games use."""

    def __init__(self, state: Any, observation_type: type) -> None:
        self.state = state
        self.observation_type = observation_type

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (len(args) == 3 and not kwargs and not isinstance(args[0], str) and isinstance(args[1], str)
                and isinstance(args[2], self.observation_type)):
            args = (args[1], args[2], args[0])  # (from_id, message, type) -> (message, type, from_id)
        return type(self.state).add_observation(self.state, *args, **kwargs)


def _install_fixes(env: Any, textarena: Any) -> None:
    state = getattr(env, "state", None)
    if state is None:
        return
    if callable(getattr(type(state), "set_invalid_move", None)):
        state.set_invalid_move = _SetInvalidMoveFix(state)
    if callable(getattr(type(state), "add_observation", None)):
        state.add_observation = _AddObservationFix(state, textarena.ObservationType)


# --------------------------------------------------------------------------------------------------------------
# the responder
# --------------------------------------------------------------------------------------------------------------

def _format_messages(messages: Sequence[Any], observation_type: type) -> str:
    """The text of a TextArena observation list: every game message, the echo of the agent's action dropped."""
    parts: list[str] = []
    for entry in messages:
        items = tuple(entry) if isinstance(entry, (tuple, list)) else (None, entry, None)
        kinds = [item for item in items if isinstance(item, observation_type)]
        if kinds and kinds[0] == observation_type.PLAYER_ACTION:
            continue  # the agent's own text, already in the conversation
        text = items[1] if len(items) > 1 and isinstance(items[1], str) else next(
            (item for item in items if isinstance(item, str)), None)
        if text is None:
            continue
        text = text.strip("\n").rstrip()
        if text.strip():
            parts.append(text)
    return "\n\n".join(parts)


class TextArenaResponder:
    """One single-player TextArena game as a :class:`~text_envs.responders.base.Responder`.

    :param game_id: a registered single-player game id, with or without ``-raw`` (``"Sudoku-v0"``,
        ``"Sudoku-v0-hard"``); the raw (unwrapped) variant is played, see the module docstring.
    :raises UnknownResponderError: for an id TextArena does not know (the message lists close matches).
    :raises ConfigError: for a multi-player game or one that cannot be built here (see
        :data:`UNAVAILABLE_GAMES`).
    :raises MissingDependencyError: without ``textarena`` installed, or for a game whose data/packages are missing.
    """

    def __init__(self, game_id: str) -> None:
        self._textarena = _import_textarena()
        public, raw = _resolve(game_id)
        self.game_id: str = public
        self.name: str = f"textarena:{public}"
        self._raw_id = raw
        self._env: Any = self._make()
        self._seed: int | None = None
        self._options: dict[str, Any] = {}
        self._turns: list[str] = []
        self._started = False
        self._done = False
        self._rng_state: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_textarena", None)  # a module: re-imported on unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._textarena = _import_textarena()

    def _make(self) -> Any:
        try:
            with _quiet(f"make({self._raw_id})"), _keep_global_random():
                return self._textarena.make(self._raw_id)
        except Exception as error:
            raise _load_error(self.game_id, error) from error

    @contextlib.contextmanager
    def _game_call(self, label: str) -> Iterator[None]:
        """Run game code with this responder's random state swapped in and textarena's output captured."""
        outer = random.getstate()
        if self._rng_state is not None:
            random.setstate(self._rng_state)
        try:
            with _quiet(f"{self.name} {label}"):
                yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    @property
    def done(self) -> bool:
        """Whether the current game is over (``True`` before the first :meth:`reset`)."""
        return self._done or not self._started

    @property
    def seed(self) -> int | None:
        """The seed of the current game (drawn at random when :meth:`reset` got ``seed=None``)."""
        return self._seed

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> str:
        """Start a new game; returns its opening observation (rules, first board).

        :param seed: makes the game reproducible; ``None`` draws one (readable as :attr:`seed` afterwards).
        :param options: accepted for the protocol (``{"split": "train" | "eval"}``); TextArena has no splits.
        """
        if seed is None:
            seed = secrets.randbits(63)
        elif isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise ConfigError(f"{self.name}: seed must be an int or None, got {seed!r}")
        seed = int(seed)
        if seed < 0:
            raise ConfigError(f"{self.name}: seed must be non-negative, got {seed}")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"{self.name}: options must be a dict or None, got {options!r}")
        self._seed, self._options, self._turns = seed, dict(options or {}), []
        self._rng_state = random.Random(seed).getstate()
        self._started, self._done = False, False
        try:
            with self._game_call("reset"):
                self._env.reset(num_players=1, seed=seed)
                _install_fixes(self._env, self._textarena)
                _, observation = self._env.get_observation()
        except (ImportError, LookupError) as error:
            raise _load_error(self.game_id, error) from error
        except Exception as error:
            raise ResponderError(f"{self.name}: the game raised {type(error).__name__} in reset(seed={seed}): "
                                 f"{error}") from error
        self._started = True
        message = _format_messages(observation, self._textarena.ObservationType)
        if not message.strip():
            raise ResponderError(f"{self.name}: the game's opening observation is empty")
        return message

    def respond(self, agent_text: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        """Play ``agent_text`` as the player's move.

        :returns: ``(reply, reward, done, info)``: the game's new observation (``None`` once the game is over),
            player 0's reward when the game ends (0.0 before), whether it ended, and ``info`` with ``turn`` and,
            at the end, ``reason``, ``invalid_move`` and the game's last words in ``final_message``.
        :raises ResponderError: before :meth:`reset`, after the game ended, for a non-string text, or if the
            game itself raises.
        """
        if not self._started:
            raise ResponderError(f"{self.name}: respond() before reset()")
        if self._done:
            raise ResponderError(f"{self.name}: the game is over; call reset() to start a new one")
        if not isinstance(agent_text, str):
            raise ResponderError(f"{self.name}: agent_text must be a string, got {type(agent_text).__name__}")
        try:
            with self._game_call(f"step {len(self._turns) + 1}"):
                done, _ = self._env.step(action=agent_text)
                _, observation = self._env.get_observation()
                rewards, game_info = self._env.close() if done else (None, None)
        except Exception as error:
            raise ResponderError(f"{self.name}: the game raised {type(error).__name__} on turn "
                                 f"{len(self._turns) + 1}: {error}") from error
        self._turns.append(agent_text)
        text = _format_messages(observation, self._textarena.ObservationType)
        info: dict[str, Any] = {"turn": len(self._turns)}
        if not done:
            return (text or None), 0.0, False, info
        self._done = True
        player = (game_info or {}).get(0, {}) if isinstance(game_info, dict) else {}
        info["reason"] = str(player.get("reason", ""))
        info["invalid_move"] = bool(player.get("invalid_move", False))
        if text:
            info["final_message"] = text
        reward = (rewards or {}).get(0, 0.0) if isinstance(rewards, dict) else 0.0
        if not _is_real(reward) or not math.isfinite(float(reward)):
            raise ResponderError(f"{self.name}: the game's final reward for player 0 is {reward!r}, not a finite "
                                 "number")
        return None, float(reward), True, info

    def __deepcopy__(self, memo: dict[int, Any]) -> TextArenaResponder:
        cls = type(self)
        clone = cls.__new__(cls)
        memo[id(self)] = clone
        try:
            for key, value in self.__dict__.items():
                setattr(clone, key, value if key == "_textarena" else copy.deepcopy(value, memo))
        except Exception as error:  # noqa: BLE001 - a game that cannot be copied: rebuild it by replaying
            logger.debug("%s: deepcopy failed (%s: %s); replaying %d turns", self.name, type(error).__name__,
                         error, len(self._turns))
            clone = self._replay()
            memo[id(self)] = clone
        return clone

    def _replay(self) -> TextArenaResponder:
        """A new responder brought to this one's state: same seed, the same agent turns."""
        clone = type(self)(self.game_id)
        if self._started or self._seed is not None:
            clone.reset(seed=self._seed, options=self._options)
            for text in self._turns:
                clone.respond(text)
        return clone

    def __repr__(self) -> str:
        return f"TextArenaResponder({self.game_id!r}, seed={self._seed}, turns={len(self._turns)})"


def textarena_factory(game_id: str) -> functools.partial[TextArenaResponder]:
    """A zero-argument factory of :class:`TextArenaResponder` for ``game_id``, validated now.

    Validation builds the game once, so an unknown id, a multi-player game or a game that cannot run here
    fails at configuration time rather than in the first episode.

    :raises UnknownResponderError: for an id TextArena does not know (the message lists close matches).
    :raises ConfigError: for a multi-player game or a game that cannot be built here.
    :raises MissingDependencyError: without ``textarena`` (``pip install 'textgen-rl[games]'``), or for a game
        whose NLTK data or packages are missing.
    """
    TextArenaResponder(game_id)
    public, _ = _resolve(game_id)
    return functools.partial(TextArenaResponder, public)

