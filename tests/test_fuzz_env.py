"""Fuzzing the env API against a shadow env (hypothesis).

Every generated case is a call on the env under test: ``step`` with good and bad actions, ``reset`` with
good and bad seeds and options, setting ``kl_coef``, a reward model that fails on the step that ends an
episode, or a constructor call. The oracle knows which calls are valid (from the shadow env's state):

* a valid call must succeed and is replayed on the **shadow** env, which only ever receives valid calls:
  both must return the same thing;
* an invalid call must raise one of our typed errors (:class:`~text_envs.errors.TextEnvsError`);
  anything else is an **untyped error**, no exception at all a **silent accept**;
* after every call, the env's complete state (slots, tokens, KL sums, generators, options, the reference
  KV cache) must equal the shadow's: otherwise a **state difference**.

The outcome counts are printed (``pytest -s``) and the README's reliability section quotes them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.micro import MICRO_VOCAB, build_micro_model, count_a, micro_task
from text_envs.env import TextGenEnv
from text_envs.errors import TextEnvsError
from text_envs.vector_env import TextGenVectorEnv

VOCAB = len(MICRO_VOCAB)
EOS = MICRO_VOCAB["</s>"]
#: every test of this module on one xdist worker (``make test`` runs ``--dist loadgroup``): the count check at the
#: end reads the outcomes the other tests of the module recorded in this process
pytestmark = pytest.mark.xdist_group("fuzz-env")

OUTCOMES: Counter = Counter()
FUZZ_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


class SwitchReward:
    """``count_a``, or a failure mode for the next call: NaN, wrong length, wrong type, an exception."""

    name = "switch"

    def __init__(self) -> None:
        self.mode = "ok"

    def __call__(self, prompts: list[str], completions: list[str]) -> Any:
        mode, self.mode = self.mode, "ok"
        if mode == "raise":
            raise RuntimeError("the scoring service is down")
        if mode == "nan":
            return [float("nan")] * len(completions)
        if mode == "short":
            return count_a(prompts, completions)[:-1] or [0.0, 0.0]
        if mode == "str":
            return "good"
        return count_a(prompts, completions)


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-fuzz"), seed=0)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nfuzz outcomes: {dict(sorted(OUTCOMES.items()))}; cases: {sum(OUTCOMES.values())}")


# ------------------------------------------------------------------------------------------------- state
def _tensor_state(tensor: torch.Tensor | None) -> Any:
    return None if tensor is None else (tuple(tensor.shape), tensor.detach().cpu().double().numpy().tobytes())


def fingerprint(env: Any) -> Any:
    """Everything that defines the env's future: slots, generators, options, the reference's cache."""
    env = env.unwrapped
    batch = env.batch
    slots = tuple((s.prompt, tuple(s.prompt_ids), tuple(s.generated), s.finished, s.ref_logprob_sum)
                  for s in batch.slots)
    stepper = batch.stepper
    cache = None
    if stepper is not None:
        layers = tuple((_tensor_state(layer.keys), _tensor_state(layer.values)) for layer in stepper.cache.layers) \
            if stepper.cache is not None else None
        cache = (stepper.mask.tolist(), stepper.positions.tolist(), tuple(map(tuple, stepper.tokens)), layers)
    if isinstance(env, TextGenVectorEnv):
        generators = (tuple(str(r.bit_generator.state) for r in env._rngs), env._split, env._group_size,
                      tuple(sorted((k, tuple(v)) for k, v in env._group_queues.items())), tuple(env._episode_counts))
    else:
        generators = None if env._np_random is None else str(env._np_random.bit_generator.state)
    return slots, batch.kl_coef, cache, _tensor_state(batch.ref_logprobs), generators, env._closed


def same_result(a: Any, b: Any) -> bool:
    """Deep equality of env outputs (arrays, dicts, floats with NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_result(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_result(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or (a.dtype == object) != (b.dtype == object):
            return False
        if a.dtype == object:
            return all(same_result(x, y) for x, y in zip(a.flat, b.flat))
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


# ----------------------------------------------------------------------------------------------- oracle
@dataclass
class Case:
    """One call: ``run(env)`` on the env under test and (when valid) on the shadow."""

    label: str
    run: Callable[[Any], Any]
    valid: bool
    reward_mode: str = "ok"  # set on the env under test's reward just before the call
    tags: list[str] = field(default_factory=list)


def apply(case: Case, env: Any, shadow: Any, reward: SwitchReward) -> None:
    reward.mode = case.reward_mode
    try:
        result = case.run(env)
    except TextEnvsError as error:
        outcome = "rejected (typed)" if not case.valid else "valid call rejected"
        OUTCOMES[outcome] += 1
        assert not case.valid, f"{case.label}: a valid call raised {type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001 - exactly what the oracle looks for
        OUTCOMES["untyped error"] += 1
        raise AssertionError(f"{case.label}: untyped {type(error).__name__}: {error}") from error
    else:
        reward.mode = "ok"  # a step that did not end an episode never called the reward model
        OUTCOMES["accepted" if case.valid else "silent accept"] += 1
        assert case.valid, f"{case.label}: an invalid call was accepted"
        expected = case.run(shadow)
        assert same_result(result, expected), f"{case.label}: result differs from the shadow's"
    if fingerprint(env) != fingerprint(shadow):
        OUTCOMES["state difference"] += 1
        raise AssertionError(f"{case.label}: the env's state differs from the shadow's after the call")


BAD_ACTIONS = [None, "5", b"5", 5.0, np.float32(1.5), 2**64, -1, VOCAB, True, np.array([1, 2]), [3], {}, 1.5,
               np.array([[1]]), object()]
GOOD_ACTIONS = [0, 1, 2, 3, 4, np.int64(3), np.int32(4), np.array(3), np.array([4]), np.uint8(3)]
BAD_SEEDS = [-1, "7", 1.5, True, 2**64, [1], np.float64(3)]
GOOD_SEEDS = [None, 0, 7, np.int64(11)]
GOOD_OPTIONS = [None, {}, {"split": "eval"}, {"prompt": "a b"}, {"split": "train", "prompt": "b"}]
BAD_OPTIONS = [{"split": "test"}, {"prompt": ""}, {"prompt": "\ud800"}, {"bogus": 1}, [1, 2], {"prompt": 5},
               {1: 2}, {"split": None}, "eval", {"prompts": ["a"]}, {"prompt": "   "}]
GOOD_COEFS = [0.0, 0.05, np.float32(0.1), 1, np.int64(2), 1000.0]
BAD_COEFS = ["7", True, -1, float("nan"), float("inf"), 1e308, None, [0.1], 1000.5]


def _finishes(shadow: Any, action: Any) -> np.ndarray:
    """Which slots of the shadow end on ``action`` (valid actions only)."""
    batch = shadow.unwrapped.batch
    actions = np.broadcast_to(np.asarray(action, dtype=np.int64).reshape(-1), (batch.batch_size,))
    return np.array([int(a) == EOS or len(s.generated) + 1 >= batch.max_new_tokens
                     for a, s in zip(actions, batch.slots)])


def single_case(draw: Any, shadow: TextGenEnv) -> Case:
    kind = draw(st.sampled_from(["step", "step", "step", "bad_step", "failing_reward", "reset", "bad_reset",
                                 "coef", "bad_coef"]))
    running = not shadow.batch.slots[0].finished
    if kind == "step":
        action = draw(st.sampled_from(GOOD_ACTIONS))
        return Case(f"step({action!r})", lambda e: e.step(action), valid=running)
    if kind == "bad_step":
        action = draw(st.sampled_from(BAD_ACTIONS))
        return Case(f"step({action!r})", lambda e: e.step(action), valid=False)
    if kind == "failing_reward":
        action = draw(st.sampled_from([EOS, 3, 4]))
        mode = draw(st.sampled_from(["raise", "nan", "short", "str"]))
        ends = running and bool(_finishes(shadow, action)[0])
        return Case(f"step({action}) with reward {mode}", lambda e: e.step(action), valid=running and not ends,
                    reward_mode=mode)
    if kind in ("reset", "bad_reset"):
        bad_seed = kind == "bad_reset" and draw(st.booleans())
        bad_options = kind == "bad_reset" and not bad_seed
        seed = draw(st.sampled_from(BAD_SEEDS if bad_seed else GOOD_SEEDS))
        options = draw(st.sampled_from(BAD_OPTIONS if bad_options else GOOD_OPTIONS))
        valid = kind == "reset"
        return Case(f"reset(seed={seed!r}, options={options!r})", lambda e: e.reset(seed=seed, options=options),
                    valid=valid)
    coef = draw(st.sampled_from(GOOD_COEFS if kind == "coef" else BAD_COEFS))

    def set_coef(e: Any) -> float:
        e.unwrapped.kl_coef = coef
        return e.unwrapped.kl_coef

    return Case(f"kl_coef = {coef!r}", set_coef, valid=kind == "coef")


def vector_case(draw: Any, shadow: TextGenVectorEnv) -> Case:
    n = shadow.num_envs
    kind = draw(st.sampled_from(["step", "step", "step", "bad_step", "failing_reward", "reset", "bad_reset",
                                 "coef", "bad_coef"]))
    if kind == "step":
        actions = draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))
        form = draw(st.sampled_from(["array", "list", "int32"]))
        value = {"array": np.array(actions), "list": actions, "int32": np.array(actions, dtype=np.int32)}[form]
        return Case(f"step({value!r})", lambda e: e.step(value), valid=True)
    if kind == "bad_step":
        value = draw(st.sampled_from([np.zeros((2, 2), dtype=np.int64), np.zeros(n + 1, dtype=np.int64),
                                      np.full(n, 1.5), [None] * n, np.full(n, VOCAB), np.full(n, -1), "0" * n,
                                      [2**64] * n, np.zeros(n, dtype=bool), None, 3]))
        return Case(f"step({value!r})", lambda e: e.step(value), valid=False)
    if kind == "failing_reward":
        actions = np.array(draw(st.lists(st.sampled_from([EOS, 3, 4]), min_size=n, max_size=n)))
        mode = draw(st.sampled_from(["raise", "nan", "short", "str"]))
        return Case(f"step({actions!r}) with reward {mode}", lambda e: e.step(actions),
                    valid=not _finishes(shadow, actions).any(), reward_mode=mode)
    if kind in ("reset", "bad_reset"):
        good_options = [None, {"split": "eval"}, {"prompt": "a"}, {"prompts": ["a b"] * n},
                        {"group_size": 2}, {"group_size": n, "split": "eval"}]
        bad_options = [{"prompts": ["a"] * (n - 1)}, {"prompts": ["a"] * (n - 1) + [""]}, {"group_size": 3},
                       {"group_size": 0}, {"group_size": "2"}, {"split": "eval", "prompts": ["only one"]},
                       {"group_size": 2, "prompts": [1, 2, 3, 4]}, {"prompt": "a", "prompts": ["a"] * n},
                       {"split": "test"}]
        good_seeds = [None, 3, [1, 2, 3, 4], np.int64(5)]
        bad_seeds = [[1, 2], -1, "x", [1, 2, 3, -4], 2**63 - 2]
        if kind == "reset":
            seed, options, valid = draw(st.sampled_from(good_seeds)), draw(st.sampled_from(good_options)), True
        elif draw(st.booleans()):
            seed, options, valid = draw(st.sampled_from(bad_seeds)), draw(st.sampled_from(good_options)), False
        else:
            seed, options, valid = draw(st.sampled_from(good_seeds)), draw(st.sampled_from(bad_options)), False
        return Case(f"reset(seed={seed!r}, options={options!r})", lambda e: e.reset(seed=seed, options=options),
                    valid=valid)
    coef = draw(st.sampled_from(GOOD_COEFS if kind == "coef" else BAD_COEFS))

    def set_coef(e: Any) -> float:
        e.kl_coef = coef
        return e.kl_coef

    return Case(f"kl_coef = {coef!r}", set_coef, valid=kind == "coef")


def run_sequence(data: Any, make: Callable[[SwitchReward], Any], next_case: Callable, length: int) -> None:
    reward, shadow_reward = SwitchReward(), SwitchReward()
    env, shadow = make(reward), make(shadow_reward)
    seed = data.draw(st.integers(0, 1000), label="seed")
    for e in (env, shadow):
        e.reset(seed=seed)
    assert fingerprint(env) == fingerprint(shadow)
    for _ in range(length):
        case = next_case(data.draw, shadow)
        apply(case, env, shadow, reward)
    if data.draw(st.booleans(), label="close"):
        env.close()
        shadow.close()
        for label, call in (("reset after close", lambda e: e.reset()), ("step after close", lambda e: e.step(0)),
                            ("render after close", lambda e: e.render())):
            apply(Case(label, call, valid=False), env, shadow, reward)


@pytest.mark.parametrize("penalty", ["dense", "sparse"])
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_single_env(micro_dir, penalty, data):
    def make(reward: SwitchReward) -> TextGenEnv:
        return TextGenEnv(model=str(micro_dir), task=micro_task(3), reward_model=reward, kl_coef=0.1,
                          kl_penalty=penalty, device="cpu")

    run_sequence(data, make, single_case, length=12)


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_vector_env(micro_dir, data):
    def make(reward: SwitchReward) -> TextGenVectorEnv:
        return TextGenVectorEnv(num_envs=4, model=str(micro_dir), task=micro_task(3), reward_model=reward,
                                kl_coef=0.1, device="cpu")

    run_sequence(data, make, vector_case, length=12)


# ------------------------------------------------------------------------------------------- constructor
GOOD_ARGS: dict[str, list[Any]] = {
    "kl_coef": [0.0, 0.05, np.float32(0.2), 3],
    "max_new_tokens": [None, 1, np.int64(3), 8],
    "max_prompt_tokens": [None, 4, np.int32(10)],
    "kl_penalty": ["dense", "sparse"],
    "device": ["cpu", "auto"],
    "dtype": ["auto", "float32", "bf16"],
    "render_mode": [None, "ansi", "rgb_array"],
    "reward_model": [None, "length", count_a],
    "verbose": [False, True],
}
BAD_ARGS: dict[str, list[Any]] = {
    "model": [None, 123, "", "no-such-model-xyz", b"tiny"],
    "kl_coef": [-0.1, True, "0.1", float("nan"), 1e308, None],
    "max_new_tokens": [0, True, 10**9, 2.5, "3", -4, 40],
    "max_prompt_tokens": [0, False, 1.0, 10**9, "8"],
    "kl_penalty": ["exact", None, 1],
    "device": ["banana", "meta", "xla", 3, "cuda:99"],
    "dtype": ["int8", 8, "double"],
    "render_mode": ["human", 1, "banana"],
    "reward_model": ["nosuch", 123, ["length"]],
    "reward_kwargs": [[1], "x"],
    "task": ["nosuch", 5],
    "verbose": ["yes", 1],
}


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_constructor(micro_dir, data):
    kwargs: dict[str, Any] = {"model": str(micro_dir), "task": micro_task(3)}
    for name, values in GOOD_ARGS.items():
        if data.draw(st.booleans(), label=f"set {name}"):
            kwargs[name] = data.draw(st.sampled_from(values), label=name)
    valid = data.draw(st.booleans(), label="valid")
    if not valid:
        name = data.draw(st.sampled_from(sorted(BAD_ARGS)), label="bad argument")
        kwargs[name] = data.draw(st.sampled_from(BAD_ARGS[name]), label=f"bad {name}")
    label = f"TextGenEnv({kwargs})"
    try:
        env = TextGenEnv(**kwargs)
    except TextEnvsError as error:
        OUTCOMES["rejected (typed)" if not valid else "valid call rejected"] += 1
        assert not valid, f"{label}: a valid constructor call raised {type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001
        OUTCOMES["untyped error"] += 1
        raise AssertionError(f"{label}: untyped {type(error).__name__}: {error}") from error
    else:
        OUTCOMES["accepted" if valid else "silent accept"] += 1
        assert valid, f"{label}: invalid arguments were accepted"
        env.reset(seed=0)
        env.close()


def test_enough_cases_ran():
    """The fuzz tests above ran at least 1,000 cases, with none of the three failure outcomes."""
    assert sum(OUTCOMES.values()) >= 1000, OUTCOMES
    assert not {"untyped error", "silent accept", "state difference", "valid call rejected"} & set(OUTCOMES), OUTCOMES
