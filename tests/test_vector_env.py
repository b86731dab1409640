"""The natively batched vector env: equivalence with single envs, one batched forward, grouped resets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import text_envs  # noqa: F401
from text_envs.errors import ConfigError
from text_envs.vector_env import TextGenVectorEnv

N = 3


def actions_for(step: int, n: int, eos: int) -> np.ndarray:
    """A fixed action schedule with an EOS now and then, so that episodes end at different steps."""
    rng = np.random.default_rng(step)
    actions = rng.integers(5, 400, size=n)
    actions[rng.random(n) < 0.2] = eos
    return actions


def test_same_observations_and_rewards_as_single_envs(tiny_gpt2_dir):
    kwargs = {"model": str(tiny_gpt2_dir), "max_new_tokens": 4, "kl_coef": 0.2}
    vector = gym.make_vec("TextGen-v0", num_envs=N, **kwargs)
    assert isinstance(vector, TextGenVectorEnv)
    singles = [gym.make("TextGen-v0", **kwargs) for _ in range(N)]
    eos = vector.tokenizer.eos_token_id
    v_obs, v_info = vector.reset(seed=10)
    s_obs = [env.reset(seed=10 + i) for i, env in enumerate(singles)]
    for i in range(N):
        assert np.array_equal(v_obs["input_ids"][i], s_obs[i][0]["input_ids"])
        assert v_info["prompt"][i] == s_obs[i][1]["prompt"]
    finished = 0
    for step in range(14):
        actions = actions_for(step, N, eos)
        v_obs, v_rew, v_term, v_trunc, v_info = vector.step(actions)
        for i, env in enumerate(singles):
            obs, reward, terminated, truncated, info = env.step(int(actions[i]))
            assert reward == pytest.approx(v_rew[i], abs=1e-4)
            assert terminated == v_term[i] and truncated == v_trunc[i]
            if terminated:
                finished += 1
                assert np.array_equal(v_info["final_obs"][i]["input_ids"], obs["input_ids"])
                assert v_info["final_info"]["text"][i] == info["text"]
                assert v_info["final_info"]["score"][i] == pytest.approx(info["score"])
                obs, _ = env.reset()  # same-step autoreset in the vector env
            assert np.array_equal(v_obs["input_ids"][i], obs["input_ids"])
            assert np.array_equal(v_obs["attention_mask"][i], obs["attention_mask"])
    assert finished >= N, "the schedule must exercise autoresets"


def test_one_batched_reference_forward_per_step(tiny_gpt2_dir):
    vector = gym.make_vec("TextGen-v0", num_envs=4, model=str(tiny_gpt2_dir), max_new_tokens=8)
    vector.reset(seed=0)
    reference = vector.batch.stepper.model
    calls = []
    original = reference.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    reference.forward = spy
    for _ in range(5):
        vector.step(np.full(4, 50))
    assert calls == [(4, 1)] * 5


def test_reward_model_called_once_per_step_for_all_finished(tiny_gpt2_dir):
    batches = []

    def counting_reward(prompts, completions):
        batches.append(len(completions))
        return [0.0] * len(completions)

    vector = gym.make_vec("TextGen-v0", num_envs=4, model=str(tiny_gpt2_dir), max_new_tokens=2,
                          reward_model=counting_reward, kl_coef=0.0)
    vector.reset(seed=0)
    vector.step(np.full(4, 50))
    vector.step(np.full(4, 50))
    assert batches == [4]


def test_grouped_resets_share_prompts(tiny_gpt2_dir):
    vector = gym.make_vec("TextGen-v0", num_envs=4, model=str(tiny_gpt2_dir), max_new_tokens=3, kl_coef=0.0)
    _, info = vector.reset(seed=0, options={"group_size": 2})
    assert info["prompt"][0] == info["prompt"][1] and info["prompt"][2] == info["prompt"][3]
    eos = vector.tokenizer.eos_token_id
    finals: dict[tuple[int, int], set[str]] = {}
    for step in range(12):
        _, _, term, _, info = vector.step(actions_for(step, 4, eos))
        for i in np.flatnonzero(term):
            key = (int(info["final_info"]["group"][i]), int(info["final_info"]["group_episode"][i]))
            finals.setdefault(key, set()).add(str(info["final_info"]["prompt"][i]))
    assert len(finals) >= 4
    assert all(len(prompts) == 1 for prompts in finals.values()), finals
    with pytest.raises(ConfigError, match="group_size"):
        vector.reset(options={"group_size": 3})


def test_forced_prompts_and_seed_lists(tiny_gpt2_dir):
    vector = gym.make_vec("TextGen-v0", num_envs=2, model=str(tiny_gpt2_dir), kl_coef=0.0)
    _, info = vector.reset(options={"prompts": ["One", "Two"]})
    assert list(info["prompt"]) == ["One", "Two"]
    with pytest.raises(ConfigError, match="2 prompts"):
        vector.reset(options={"prompts": ["only one"]})
    with pytest.raises(ConfigError, match="2 seeds"):
        vector.reset(seed=[1, 2, 3])


def test_sync_vector_env_of_single_envs_works(tiny_gpt2_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="sync", model=str(tiny_gpt2_dir),
                        max_new_tokens=3)
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape[0] == 2
    for _ in range(4):
        obs, rewards, terminated, truncated, infos = envs.step(np.full(2, 60))
    assert rewards.shape == (2,)


def test_render_ansi_for_every_sub_env(tiny_gpt2_dir):
    vector = gym.make_vec("TextGen-v0", num_envs=2, model=str(tiny_gpt2_dir), kl_coef=0.0, render_mode="ansi")
    vector.reset(options={"prompts": ["Alpha", "Beta"]})
    assert [text.startswith(p) for text, p in zip(vector.render(), ["Alpha", "Beta"])] == [True, True]


@pytest.mark.parametrize("penalty", ["sparse", "deferred"])
def test_sparse_penalty_uses_one_reference_forward_at_the_end(tiny_gpt2_dir, penalty):
    kwargs = {"model": str(tiny_gpt2_dir), "max_new_tokens": 5, "kl_coef": 0.3}
    dense = gym.make_vec("TextGen-v0", num_envs=3, **kwargs)
    sparse = gym.make_vec("TextGen-v0", num_envs=3, kl_penalty=penalty, **kwargs)
    assert sparse.batch.stepper is None and sparse.batch.reference is not None
    calls = []
    original = sparse.batch.reference.forward

    def spy(*args, **kw):
        calls.append(kw["input_ids"].shape)
        return original(*args, **kw)

    sparse.batch.reference.forward = spy
    dense.reset(seed=4)
    sparse.reset(seed=4)
    totals_dense, totals_sparse = np.zeros(3), np.zeros(3)
    for step in range(5):
        actions = np.full(3, 40 + step)
        _, r_dense, done, _, info_dense = dense.step(actions)
        _, r_sparse, _, _, info_sparse = sparse.step(actions)
        totals_dense += r_dense
        totals_sparse += r_sparse
    assert done.all()
    assert len(calls) == 1 and calls[0][0] == 3, calls  # one batched forward, when all three finished
    assert totals_sparse == pytest.approx(totals_dense, abs=1e-4)
    assert info_sparse["final_info"]["kl_ref_logprob_sum"] == pytest.approx(
        info_dense["final_info"]["kl_ref_logprob_sum"], abs=1e-4)
    if penalty == "deferred":  # each sub-env's per-token terms, from the same single forward
        per_token = info_sparse["final_info"]["ref_logprobs"]
        assert [len(row) for row in per_token] == [5, 5, 5]
        assert [sum(row) for row in per_token] == pytest.approx(
            info_sparse["final_info"]["kl_ref_logprob_sum"].tolist(), abs=1e-9)
    else:
        assert "ref_logprobs" not in info_sparse["final_info"]


def test_async_vector_env_of_single_envs_works(tiny_gpt2_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="async", model=str(tiny_gpt2_dir),
                        max_new_tokens=2, kl_coef=0.1)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs["input_ids"].shape[0] == 2
        _, r1, t1, _, _ = envs.step(np.full(2, 60))
        _, r2, t2, _, infos = envs.step(np.full(2, 61))
        assert not t1.any() and t2.all() and (r1 < 0).all()  # dense reference term, then the score
        assert list(infos["_score"]) == [True, True]
    finally:
        envs.close()
