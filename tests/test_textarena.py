"""TextArena single-player games as ``TextChat-v0`` responders (``text_envs.responders.textarena``).

Every game in ``OFFLINE_GAMES`` is played for a few seeded episodes of random short texts mixed with moves in
the game's own format (TextArena ends an episode after two invalid moves in a row, so pure noise would never
get past turn 2). The games in ``UNAVAILABLE_GAMES`` are skipped with their recorded reason.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import string
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

textarena = pytest.importorskip("textarena")

from text_envs.errors import (
    ConfigError,
    MissingDependencyError,
    ResponderError,
    TextEnvsError,
    UnknownResponderError,
)
from text_envs.responders import textarena as adapter
from text_envs.responders.base import (
    Responder,
    check_first_message,
    check_turn,
    responder_factory,
)
from text_envs.responders.textarena import (
    OFFLINE_GAMES,
    UNAVAILABLE_GAMES,
    TextArenaResponder,
    textarena_factory,
)

MAX_TURNS = 8
SEEDS = (0, 1, 2)

# A move in each game's own format (often illegal in the position, but well-formed), so episodes go on.
_MOVES: dict[str, Callable[[random.Random], str]] = {
    "2048-v0": lambda rng: rng.choice(["[Up]", "[Down]", "[Left]", "[Right]"]),
    "Bandit-v0": lambda rng: f"[{rng.choice(['red', 'blue', 'green', 'yellow', 'purple'])}]",
    "Blackjack-v0": lambda rng: rng.choice(["[Hit]", "[Stand]"]),
    "Countdown-v0": lambda rng: f"[{rng.randint(0, 5)} {rng.randint(0, 5)} {rng.choice('+-*/')}]",
    "Crosswords-v0": lambda rng: f"[{rng.randint(0, 11)} {rng.randint(0, 11)} {rng.choice(string.ascii_lowercase)}]",
    "Cryptarithm-v0": lambda rng: f"[{rng.choice('SENDMORY')} {rng.randint(0, 9)}]",
    "FifteenPuzzle-v0": lambda rng: rng.choice(["[up]", "[down]", "[left]", "[right]"]),
    "FrozenLake-v0": lambda rng: rng.choice(["[up]", "[down]", "[left]", "[right]"]),
    "GuessTheNumber-v0": lambda rng: f"[{rng.randint(1, 20)}]",
    "LightsOut-v0": lambda rng: f"[{rng.randint(0, 4)} {rng.randint(0, 4)}]",
    "LogicPuzzle-v0": lambda rng: f"[{rng.choice(['pizza', 'burger', 'salad'])} "
                                  f"{rng.choice(['alice', 'bob', 'charlie'])} {rng.choice('XO')}]",
    "Mastermind-v0": lambda rng: "[" + " ".join(str(x) for x in rng.sample(range(1, 7), 4)) + "]",
    "Minesweeper-v0": lambda rng: f"[{rng.randint(0, 7)} {rng.randint(0, 7)}]",
    "PegJump-v0": lambda rng: f"[{rng.randint(1, 15)} {rng.randint(1, 15)}]",
    "RushHour-v0": lambda rng: f"[{rng.choice('ABCDEFGHX')}{rng.choice('+-')}]",
    "Secretary-v0": lambda rng: rng.choice(["[accept]", "[continue]", "[continue]"]),
    "Set-v0": lambda rng: "[" + ", ".join(str(x) for x in rng.sample(range(1, 13), 3)) + "]",
    "Slitherlink-v0": lambda rng: f"[{rng.choice('hv')} {rng.randint(0, 4)} {rng.randint(0, 4)}]",
    "Sokoban-v0": lambda rng: rng.choice(["[up]", "[down]", "[left]", "[right]"]),
    "Sudoku-v0": lambda rng: f"[{rng.randint(1, 9)} {rng.randint(1, 9)} {rng.randint(1, 9)}]",
    "ThreeCardMonte-v0": lambda rng: f"[{rng.randint(0, 2)}]",
    "TowerOfHanoi-v0": lambda rng: f"[{rng.choice('ABC')} {rng.choice('ABC')}]",
    "UltimateTexasHoldem-v0": lambda rng: rng.choice(["[play_bet_4x]", "[check]", "[play_bet_2x]", "[fold]"]),
}
_NOISE = ["", " ", "hello", "[", "[]", "[-1]", "[99999999999999999999]", "[a b c]", "ünïcødé ☃ [☃]", "\n\n",
          "[up][down]", "[1 2 +]", "I think the answer is [3].", "[" + "9" * 200 + "]"]


def _text(game: str, rng: random.Random) -> str:
    """A random short agent turn: a well-formed move, canned noise or random characters."""
    draw = rng.random()
    if draw < 0.6:
        return _MOVES[adapter._base_id(game)](rng)
    if draw < 0.85:
        return rng.choice(_NOISE)
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 24)))


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain Python data (what ``info`` may hold)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    return False


def _play(responder: TextArenaResponder, game: str, seed: int, turns: int = MAX_TURNS) -> list[Any]:
    """One seeded episode; returns the transcript (first message, then each validated turn)."""
    rng = random.Random(seed)
    transcript: list[Any] = [check_first_message(responder.reset(seed=seed, options={"split": "train"}), responder)]
    for _ in range(turns):
        text = _text(game, rng)
        turn = check_turn(responder.respond(text), responder)
        transcript.append((text, turn))
        if turn.done:
            break
    return transcript


@pytest.fixture(scope="module")
def factories() -> dict[str, Callable[[], TextArenaResponder]]:
    """One validated factory per offline game (the game module is imported once)."""
    return {game: textarena_factory(game) for game in OFFLINE_GAMES}


def test_tables_cover_every_single_player_game() -> None:
    assert not set(OFFLINE_GAMES) & set(UNAVAILABLE_GAMES)
    assert len(set(OFFLINE_GAMES)) == len(OFFLINE_GAMES)
    assert all(isinstance(reason, str) and reason for reason in UNAVAILABLE_GAMES.values())
    assert set(OFFLINE_GAMES) <= set(_MOVES)
    registry = textarena.envs.registration.ENV_REGISTRY
    singles = adapter.single_player_games()
    bases = {adapter._base_id(game) for game in singles}
    assert set(OFFLINE_GAMES) <= set(singles), "an OFFLINE_GAMES id is not a registered single-player game"
    assert set(UNAVAILABLE_GAMES) <= set(registry)
    assert "Chess-v0" not in singles and "GuessTheNumber-v0-hardcore" in singles
    if textarena.__version__ != adapter.PROBED_TEXTARENA_VERSION:
        pytest.skip(f"the tables were probed with textarena {adapter.PROBED_TEXTARENA_VERSION}, "
                    f"{textarena.__version__} is installed")
    assert bases == set(OFFLINE_GAMES) | set(UNAVAILABLE_GAMES), "a single-player game is in neither table"


@pytest.mark.parametrize("game", OFFLINE_GAMES)
def test_offline_game_follows_the_protocol(game: str, factories: dict[str, Callable[[], TextArenaResponder]]) -> None:
    responder = factories[game]()
    assert isinstance(responder, Responder)
    assert responder.name == f"textarena:{game}"
    for seed in SEEDS:
        transcript = _play(responder, game, seed)
        assert isinstance(transcript[0], str) and transcript[0].strip()
        turns = [turn for _, turn in transcript[1:]]
        assert 1 <= len(turns) <= MAX_TURNS
        assert turns[-1].done or len(turns) == MAX_TURNS
        for index, turn in enumerate(turns):
            assert math.isfinite(turn.reward)
            assert _plain(turn.info) and turn.info["turn"] == index + 1
            if turn.done:
                assert index == len(turns) - 1
                assert turn.reply is None
                assert isinstance(turn.info["reason"], str) and isinstance(turn.info["invalid_move"], bool)
            else:
                assert turn.reward == 0.0
                assert turn.reply is None or turn.reply.strip()
        assert responder.done == turns[-1].done
        assert responder.seed == seed


@pytest.mark.parametrize("game", OFFLINE_GAMES)
def test_deepcopy_continues_identically(game: str, factories: dict[str, Callable[[], TextArenaResponder]]) -> None:
    responder = factories[game]()
    for seed in SEEDS[:2]:
        rng = random.Random(100 + seed)
        responder.reset(seed=seed)
        texts = [_MOVES[game](rng) for _ in range(MAX_TURNS)]  # well-formed moves: the game goes on
        first = check_turn(responder.respond(texts[0]), responder)
        if first.done:
            continue
        clone = copy.deepcopy(responder)
        assert clone is not responder and clone._env is not responder._env
        for text in texts[1:]:
            turn = check_turn(responder.respond(text), responder)
            assert check_turn(clone.respond(text), clone) == turn
            if turn.done:
                break
        assert clone.done == responder.done


@pytest.mark.parametrize("game", OFFLINE_GAMES)
def test_same_seed_same_episode(game: str, factories: dict[str, Callable[[], TextArenaResponder]]) -> None:
    one, two = factories[game](), factories[game]()
    assert _play(one, game, seed=1) == _play(two, game, seed=1)
    # a responder is reusable: a second episode with seed 1 starts like the first
    assert one.reset(seed=1) == two.reset(seed=1)


def test_the_callers_global_random_state_is_untouched(
        factories: dict[str, Callable[[], TextArenaResponder]]) -> None:
    for game in ("2048-v0", "Bandit-v0", "Blackjack-v0", "RushHour-v0"):  # games that draw from `random`
        random.seed(1234)
        state = random.getstate()
        responder = factories[game]()
        _play(responder, game, seed=3)
        copy.deepcopy(responder)
        assert random.getstate() == state, game


def test_deepcopy_replays_a_game_that_cannot_be_copied() -> None:
    responder = TextArenaResponder("2048-v0")  # draws a random tile after every move
    responder.reset(seed=5)
    for move in ("[Up]", "[Left]"):
        responder.respond(move)
    responder._env.lock = threading.Lock()  # deepcopy raises TypeError on a lock
    clone = copy.deepcopy(responder)
    assert not hasattr(clone._env, "lock")
    assert clone._turns == responder._turns and clone.seed == responder.seed
    for move in ("[Down]", "[Right]", "[Up]", "[Up]"):
        turn = check_turn(responder.respond(move), responder)
        assert check_turn(clone.respond(move), clone) == turn
        if turn.done:
            break


def test_pickle_round_trip() -> None:
    factory = pickle.loads(pickle.dumps(textarena_factory("GuessTheNumber-v0")))
    responder = factory()
    responder.reset(seed=2)
    responder.respond("[10]")
    restored = pickle.loads(pickle.dumps(responder))
    assert restored.respond("[4]") == responder.respond("[4]")


def test_seed_none_draws_a_seed_and_is_reproducible() -> None:
    responder = TextArenaResponder("LightsOut-v0")  # the opening grid depends on the seed
    first = responder.reset()
    assert isinstance(responder.seed, int) and responder.seed >= 0
    assert TextArenaResponder("LightsOut-v0").reset(seed=responder.seed) == first


def test_textarena_prints_are_captured(capsys: pytest.CaptureFixture[str],
                                       factories: dict[str, Callable[[], TextArenaResponder]]) -> None:
    print("user output stays")
    for game, move in (("RushHour-v0", "[A+]"), ("LogicPuzzle-v0", "[pizza alice O]")):  # both print
        responder = factories[game]()
        responder.reset(seed=0)
        responder.respond(move)
    print("and after")
    captured = capsys.readouterr()
    assert captured.out == "user output stays\nand after\n"
    assert captured.err == ""


def test_game_messages_are_formatted() -> None:
    responder = TextArenaResponder("GuessTheNumber-v0-raw")
    assert responder.name == "textarena:GuessTheNumber-v0"
    first = responder.reset(seed=1)
    assert "Guess The Number" in first and "[5]" in first
    reply, reward, done, _ = responder.respond("my guess is [10]")
    assert not done and reward == 0.0
    assert reply is not None and "my guess is" not in reply  # the echo of the agent's move is dropped
    assert "higher" in reply or "lower" in reply


@pytest.mark.parametrize("game", ["Countdown-v0", "Cryptarithm-v0", "Slitherlink-v0", "ThreeCardMonte-v0"])
def test_swapped_invalid_move_arguments_are_repaired(game: str) -> None:
    """textarena 0.7.4 calls set_invalid_move(reward, reason) there: the player must still see the format."""
    responder = TextArenaResponder(game)
    responder.reset(seed=0)
    reply, reward, done, _ = responder.respond("no move here")
    assert not done and reply is not None and "Use" in reply and "Reason: 0" not in reply
    reply, reward, done, info = responder.respond("still no move")
    assert done and reply is None and isinstance(reward, float) and math.isfinite(reward)
    assert info["invalid_move"] and "Use" in info["reason"]


def test_wrapped_and_raw_ids_play_the_raw_game() -> None:
    for game_id in ("Sudoku-v0", "Sudoku-v0-raw", "Sudoku-v0-train"):
        responder = textarena_factory(game_id)()
        assert responder.name == "textarena:Sudoku-v0"
        assert responder._raw_id == "Sudoku-v0-raw"
    variant = textarena_factory("GuessTheNumber-v0-hardcore")()
    assert "between 1 and 50" in variant.reset(seed=0)


def test_responder_factory_spec() -> None:
    responder = responder_factory("textarena:TowerOfHanoi-v0")()
    assert responder.name == "textarena:TowerOfHanoi-v0"
    assert "Tower of Hanoi" in responder.reset(seed=0, options={"split": "eval"})


def test_unknown_game_lists_close_matches() -> None:
    with pytest.raises(UnknownResponderError, match="did you mean 'Sudoku-v0'"):
        textarena_factory("Sudoku")
    with pytest.raises(UnknownResponderError, match="'Mastermind-v0'"):
        responder_factory("textarena:mastermind-v0")
    with pytest.raises(KeyError):  # UnknownResponderError is a KeyError too
        textarena_factory("NoSuchGame-v0")


@pytest.mark.parametrize("game_id", ["Chess-v0", "TicTacToe-v0-raw", "Poker-v0"])
def test_multi_player_game_is_a_config_error(game_id: str) -> None:
    with pytest.raises(ConfigError, match="single-player"):
        textarena_factory(game_id)


@pytest.mark.parametrize("game_id", [None, "", "   ", 3])
def test_malformed_game_id(game_id: Any) -> None:
    with pytest.raises(ConfigError):
        textarena_factory(game_id)


def test_missing_textarena(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "textarena", None)  # `import textarena` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'textgen-rl\[games\]'"):
        textarena_factory("GuessTheNumber-v0")
    with pytest.raises(MissingDependencyError):
        responder_factory("textarena:GuessTheNumber-v0")


def test_protocol_misuse_is_a_responder_error() -> None:
    responder = TextArenaResponder("ThreeCardMonte-v0")
    with pytest.raises(ResponderError, match="before reset"):
        responder.respond("[0]")
    responder.reset(seed=0)
    with pytest.raises(ResponderError, match="string"):
        responder.respond(b"[0]")  # type: ignore[arg-type]
    assert responder.respond("[0]")[2]  # one guess ends the game
    with pytest.raises(ResponderError, match="over"):
        responder.respond("[1]")
    for seed in (-1, 1.5, "3", True):
        with pytest.raises(ConfigError):
            responder.reset(seed=seed)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        responder.reset(seed=0, options=["split"])  # type: ignore[arg-type]


def test_a_game_that_raises_is_a_responder_error(monkeypatch: pytest.MonkeyPatch) -> None:
    responder = TextArenaResponder("GuessTheNumber-v0")
    responder.reset(seed=0)

    def broken(action: str) -> None:
        raise IndexError("boom")

    monkeypatch.setattr(responder._env, "step", broken)
    with pytest.raises(ResponderError, match="IndexError"):
        responder.respond("[3]")
    assert responder._turns == []  # the failed turn was not recorded


@pytest.mark.parametrize("game", sorted(UNAVAILABLE_GAMES))
def test_unavailable_game(game: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A game that cannot run here fails with a typed error at configuration time; skipped with its reason."""
    import nltk

    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: False)  # no network attempt from the test
    try:
        textarena_factory(game)
    except (MissingDependencyError, ConfigError):
        pass
    else:
        pytest.skip(f"{game} builds here after all (its data or key is available); recorded reason: "
                    f"{UNAVAILABLE_GAMES[game]}")
    pytest.skip(UNAVAILABLE_GAMES[game])


@pytest.mark.slow
def test_every_offline_variant_plays() -> None:
    """Every difficulty variant of an offline game (Sudoku-v0-hard, Sokoban-v0-medium take seconds to reset)."""
    variants = [game for game in adapter.single_player_games()
                if adapter._base_id(game) in OFFLINE_GAMES and game not in OFFLINE_GAMES]
    assert len(variants) >= 30
    for game in variants:
        responder = textarena_factory(game)()
        transcript = _play(responder, game, seed=0, turns=4)
        assert transcript[0].strip(), game
        assert all(isinstance(turn.reward, float) for _, turn in transcript[1:]), game


def test_errors_are_text_envs_errors() -> None:
    for error in (UnknownResponderError, ConfigError, MissingDependencyError, ResponderError):
        assert issubclass(error, TextEnvsError)
