"""``kl_penalty="deferred"``: paid like ``sparse``, per-token reference log-probs in the final info, and the
buffer's per-token rewards (hence TokenPPO's GAE advantages) equal to the dense mode's, one turn and multi-turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import text_envs  # noqa: F401
from agents import RLOO, TokenPPO, TransformerPolicy, make_text_vec_env
from agents.algorithm_registry import ALGORITHMS, make_algorithm
from agents.algos.advantages import sequence_returns
from agents.buffers import SequenceRolloutBuffer, redistribute_deferred_kl
from tests.micro import build_micro_model, count_a, micro_task
from text_envs.errors import ConfigError
from text_envs.lm_stepper import BatchedLMStepper, continuation_logprob_sums, continuation_logprobs, masked_sums
from text_envs.models import load_model

BETA = 0.1
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro policy and a different micro reference (a non-trivial KL term on every token)."""
    return {"policy": build_micro_model(tmp_path_factory.mktemp("deferred-policy"), seed=0),
            "reference": build_micro_model(tmp_path_factory.mktemp("deferred-reference"), seed=3, logit_scale=3.0)}


class SayA:
    """Responder: each turn pays the fraction of its words that are ``a``; replies ``b``."""

    name = "say-a"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> str:
        return "say a"

    def respond(self, agent_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        words = agent_text.split()
        return "b", words.count("a") / max(1, len(words)), False, {}


def textgen_kwargs(models: dict[str, Path], penalty: str) -> dict[str, Any]:
    return {"model": str(models["policy"]), "reference_model": str(models["reference"]), "task": micro_task(4),
            "reward_model": count_a, "kl_coef": BETA, "kl_penalty": penalty, "device": "cpu"}


def chat_kwargs(models: dict[str, Path], penalty: str) -> dict[str, Any]:
    return {"model": str(models["policy"]), "reference_model": str(models["reference"]), "responder": SayA,
            "max_turns": 3, "max_turn_tokens": 2, "max_episode_tokens": 16, "max_prompt_tokens": 8,
            "kl_coef": BETA, "kl_penalty": penalty, "device": "cpu"}


def token_ppo_rollout(models: dict[str, Path], env_kwargs: dict[str, Any], env_id: str = "TextGen-v0",
                      seed: int = 0) -> SequenceRolloutBuffer:
    """One TokenPPO rollout (+ its update, which computes the GAE advantages from the rollout alone)."""
    env = make_text_vec_env(4, env_kwargs=env_kwargs, env_id=env_id)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(models["policy"])}, n_steps=8, batch_size=8,
                     n_epochs=1, seed=seed, device="cpu")
    model.learn(32)
    return model.rollout_buffer


def assert_same_rollout(dense: SequenceRolloutBuffer, deferred: SequenceRolloutBuffer) -> None:
    """Same episodes, and the deferred buffer's per-token rewards and advantages are the dense ones."""
    assert [e.actions for e in dense.episodes] == [e.actions for e in deferred.episodes]
    assert all("ref_logprobs" in e.info for e in deferred.episodes)
    assert not any("ref_logprobs" in e.info for e in dense.episodes)
    for name in ("rewards", "values", "logprobs"):
        (a, _), (b, _) = dense.padded(name), deferred.padded(name)
        assert float((a - b).abs().max()) < TOLERANCE, name
    assert float((dense.total_rewards()[0] - deferred.total_rewards()[0]).abs().max()) < TOLERANCE
    assert float((dense.advantages - deferred.advantages).abs().max()) < TOLERANCE
    assert float((dense.returns - deferred.returns).abs().max()) < TOLERANCE
    assert float(dense.advantages.abs().max()) > 0.1  # not trivially equal


# ------------------------------------------------------------------------------------------------ pure parts
def test_redistribute_moves_the_deferred_term_back_onto_each_token() -> None:
    # env paid 0.5 * (-1 - 2 - 3) = -3 with the score 1 on the last token; tokens taken at coefficients 0.2, 0.5, 0.5
    moved = redistribute_deferred_kl([0.0, 0.0, 1.0 - 3.0], [0.2, 0.5, 0.5], [-1.0, -2.0, -3.0], paid_coef=0.5)
    assert moved == pytest.approx([-0.2, -1.0, 1.0 - 1.5])
    with pytest.raises(ConfigError, match="one reference log-probability per action"):
        redistribute_deferred_kl([0.0, 1.0], [0.1, 0.1], [-1.0], paid_coef=0.1)


def test_continuation_logprobs_match_the_cached_stepper_and_the_sums() -> None:
    model = load_model("tiny", device="cpu")
    prefixes, continuations = [[5, 6, 7], [9]], [[20, 21, 22, 23], [30, 31]]
    per_token = continuation_logprobs(model, prefixes, continuations, pad_id=0)
    assert [len(row) for row in per_token] == [4, 2]
    for prefix, continuation, row in zip(prefixes, continuations, per_token):
        stepper = BatchedLMStepper(model, 1, pad_id=0)
        logits = stepper.prefill([0], [prefix]).logits
        for token, value in zip(continuation, row):
            assert value == pytest.approx(float(torch.log_softmax(logits, -1)[0, token]), abs=1e-5)
            logits = stepper.step(torch.tensor([token])).logits
    weights = [[1, 0, 1, 1], [0, 1]]
    assert continuation_logprob_sums(model, prefixes, continuations, 0, weights=weights) == pytest.approx(
        [per_token[0][0] + per_token[0][2] + per_token[0][3], per_token[1][1]], abs=1e-9)
    assert masked_sums(per_token) == pytest.approx([sum(row) for row in per_token], abs=1e-12)


# ------------------------------------------------------------------------------------------------- the env
def test_deferred_pays_like_sparse_and_reports_each_tokens_term(models: dict[str, Path]) -> None:
    paid, final = {}, {}
    for penalty in ("dense", "sparse", "deferred"):
        env = gym.make("TextGen-v0", max_new_tokens=5, **textgen_kwargs(models, penalty))
        env.reset(seed=0, options={"prompt": "a b"})
        rewards, info = [], {}
        for action in (3, 4, 3, 3, 4):
            _, reward, done, _, info = env.step(action)
            rewards.append(reward)
        assert done
        paid[penalty], final[penalty] = rewards, info
    assert paid["deferred"] == paid["sparse"]  # exactly the sparse mode's rewards
    assert "ref_logprobs" not in final["sparse"] and "ref_logprobs" not in final["dense"]
    per_token = final["deferred"]["ref_logprobs"]
    assert len(per_token) == final["deferred"]["num_tokens"] == 5
    assert sum(per_token) == final["deferred"]["kl_ref_logprob_sum"]
    dense_terms = [r - (final["dense"]["score"] if t == 4 else 0.0) for t, r in enumerate(paid["dense"])]
    assert [BETA * v for v in per_token] == pytest.approx(dense_terms, abs=1e-6)


def test_deferred_vector_env_reports_agent_tokens_of_dialogues(models: dict[str, Path]) -> None:
    envs = gym.make_vec("TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        **chat_kwargs(models, "deferred"))
    assert envs.unwrapped.batch.stepper is None  # no reference stepping: one teacher-forced pass per finished batch
    envs.reset(seed=1)
    for _ in range(16):
        _, _, terminated, _, info = envs.step(np.array([3, 4]))
        if terminated.any():
            break
    for slot in np.flatnonzero(terminated):
        final = {key: value[slot] for key, value in info["final_info"].items() if not key.startswith("_")}
        assert len(final["ref_logprobs"]) == final["num_tokens"] == sum(final["agent_flags"])
        assert sum(final["ref_logprobs"]) == pytest.approx(final["kl_ref_logprob_sum"], abs=1e-12)


# -------------------------------------------------------------------------------------- buffer and learners
def test_token_ppo_sees_the_dense_rewards_and_advantages(models: dict[str, Path]) -> None:
    dense = token_ppo_rollout(models, textgen_kwargs(models, "dense"))
    deferred = token_ppo_rollout(models, textgen_kwargs(models, "deferred"))
    sparse = token_ppo_rollout(models, textgen_kwargs(models, "sparse"))
    assert_same_rollout(dense, deferred)
    # critic-free algorithms use only each sequence's return: the same in every mode
    returns = [sequence_returns(*buffer.total_rewards()) for buffer in (dense, deferred, sparse)]
    assert float((returns[1] - returns[2]).abs().max()) < TOLERANCE
    assert float((returns[0] - returns[1]).abs().max()) < TOLERANCE
    # while the sparse mode's per-token rewards differ (the whole term on the last token)
    assert float((sparse.padded("rewards")[0] - deferred.padded("rewards")[0]).abs().max()) > 1e-3


def test_token_ppo_dialogues_see_the_dense_rewards_and_advantages(models: dict[str, Path]) -> None:
    dense = token_ppo_rollout(models, chat_kwargs(models, "dense"), env_id="TextChat-v0")
    deferred = token_ppo_rollout(models, chat_kwargs(models, "deferred"), env_id="TextChat-v0")
    assert any(e.env_tokens for e in deferred.episodes)  # responder tokens between the actions
    assert_same_rollout(dense, deferred)


def test_rloo_advantages_are_unchanged(models: dict[str, Path]) -> None:
    advantages = {}
    for penalty in ("sparse", "deferred"):
        env = make_text_vec_env(4, env_kwargs=textgen_kwargs(models, penalty))
        model = RLOO(TransformerPolicy, env, policy_kwargs={"model": str(models["policy"])}, group_size=2,
                     n_steps=6, seed=0, device="cpu")
        model.learn(24)
        advantages[penalty] = model.rollout_buffer.advantages
    assert float((advantages["sparse"] - advantages["deferred"]).abs().max()) < TOLERANCE


# ----------------------------------------------------------------------------------------------- registry
def test_make_algorithm_picks_each_algorithms_kl_penalty(models: dict[str, Path]) -> None:
    env_kwargs = {"model": str(models["policy"]), "task": micro_task(3), "reward_model": count_a, "kl_coef": BETA,
                  "device": "cpu"}

    def penalty(name: str, **extra: Any) -> str:
        algorithm = make_algorithm(name, env_kwargs={**env_kwargs, **extra}, num_envs=4, model=str(models["policy"]),
                                   device="cpu")
        return algorithm.env.env.batch.kl_penalty

    assert penalty("token-ppo") == "deferred"
    assert penalty("token-ppo", kl_penalty="dense") == "dense"  # the caller's choice wins
    assert penalty("rloo") == "sparse"  # the same sequence return as dense (test above), one reference pass
    assert penalty("rloo", kl_penalty="dense") == "dense"
    assert penalty("maskable-ppo") == "dense"  # its action masks need the stepped reference
    assert penalty("ppo") == "dense"  # stock SB3 PPO: GAE over the per-token rewards
    assert {name: spec.env_defaults.get("kl_penalty") for name, spec in ALGORITHMS.items() if spec.env_defaults} == {
        "token-ppo": "deferred", "reinforce": "sparse", "rloo": "sparse", "grpo": "sparse", "dr-grpo": "sparse",
        "dapo": "sparse"}
