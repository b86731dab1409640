"""TextGen-v0: spaces, episode logic, errors, the exact KL decomposition, checkers and determinism."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from transformers import GPT2LMHeadModel

import text_envs  # noqa: F401
from tests.micro import build_micro_model
from text_envs.env import TextGenEnv
from text_envs.episode_batch import PromptTruncatedWarning
from text_envs.errors import ConfigError, EpisodeFinishedError, InvalidActionError, InvalidPromptError, RewardModelError
from text_envs.tasks import list_tasks


def make_env(model_dir: Path, **kwargs):
    kwargs.setdefault("max_new_tokens", 6)
    return gym.make("TextGen-v0", model=str(model_dir), **kwargs)


def run_episode(env, actions):
    rewards, info = [], {}
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return rewards, info


# ---------------------------------------------------------------------------------------- basics
def test_defaults_work_offline_and_episode_ends_at_budget():
    env = gym.make("TextGen-v0", max_new_tokens=5)  # bundled tiny LM, sentiment task, VADER
    obs, info = env.reset(seed=0)
    assert set(obs) == {"input_ids", "attention_mask"} and obs["input_ids"].dtype == np.int64
    assert env.observation_space.contains(obs)
    assert isinstance(info["prompt"], str) and info["prompt"]
    eos = env.unwrapped.tokenizer.eos_token_id
    non_eos = next(t for t in range(10, 100) if t != eos)
    rewards, final = run_episode(env, [non_eos] * 5)
    assert len(rewards) == 5
    assert final["finish_reason"] == "length" and final["num_tokens"] == 5
    for key in ("text", "prompt", "score", "kl_ref_logprob_sum"):
        assert key in final
    assert all(type(v) in (str, float, int) for v in final.values())
    with pytest.raises(EpisodeFinishedError):
        env.step(non_eos)


def test_eos_terminates_and_observation_layout(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir)
    obs, _ = env.reset(seed=1, options={"prompt": "The cat sat"})
    mask = obs["attention_mask"]
    n = int(mask.sum())
    assert mask[-n:].all() and not mask[:-n].any(), "left padding: real tokens at the right end"
    pad = env.unwrapped.tokenizer.pad_token_id
    assert (obs["input_ids"][:-n] == pad).all()
    obs, _, terminated, truncated, _ = env.step(42)
    assert obs["input_ids"][-1] == 42 and int(obs["attention_mask"].sum()) == n + 1
    assert not terminated and not truncated
    _, _, terminated, truncated, info = env.step(env.unwrapped.tokenizer.eos_token_id)
    assert terminated and not truncated and info["finish_reason"] == "eos" and info["num_tokens"] == 2


def test_invalid_action_and_prompt_errors(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir)
    env.reset(seed=0)
    vocab = env.action_space.n
    with pytest.raises(InvalidActionError, match=f"{vocab}.*Discrete\\({vocab}\\)"):
        env.step(vocab)
    with pytest.raises(InvalidActionError, match="-1"):
        env.step(-1)
    with pytest.raises(InvalidPromptError):
        env.reset(options={"prompt": "   "})
    with pytest.raises(ConfigError, match="colour"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ConfigError, match="split"):
        env.reset(options={"split": "test"})
    with pytest.raises(ConfigError, match="kl_penalty"):
        make_env(tiny_gpt2_dir, kl_penalty="medium")


def test_long_prompt_truncated_from_left_with_warning(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir, max_prompt_tokens=8)
    words = " ".join(f"word{i}" for i in range(40))
    with pytest.warns(PromptTruncatedWarning):
        obs, _ = env.reset(options={"prompt": words})
    assert int(obs["attention_mask"].sum()) == 8
    assert obs["input_ids"].shape == (8 + 6,)
    tail = env.unwrapped.tokenizer.decode(obs["input_ids"][-8:], skip_special_tokens=True)
    assert "word39" in tail and "word0 " not in tail


def test_eval_split_and_determinism(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir)
    task = env.unwrapped.task
    eval_prompts = {e.prompt for e in task.split("eval")}
    for seed in range(5):
        _, info = env.reset(seed=seed, options={"split": "eval"})
        assert info["prompt"] in eval_prompts

    def trajectory(seed):
        e = make_env(tiny_gpt2_dir)
        out = []
        obs, info = e.reset(seed=seed)
        rng = np.random.default_rng(0)
        for _ in range(20):
            obs, r, term, _, info = e.step(int(rng.integers(5, 300)))
            out.append((obs["input_ids"].tolist(), r))
            if term:
                obs, info = e.reset()
                out.append(info["prompt"])
        return out

    assert trajectory(3) == trajectory(3)
    assert trajectory(3) != trajectory(4)


def test_render_ansi_and_rgb_array(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir, render_mode="ansi")
    env.reset(options={"prompt": "Hello there"})
    assert env.render().startswith("Hello there")
    image_env = make_env(tiny_gpt2_dir, render_mode="rgb_array")
    image_env.reset(options={"prompt": "Hello there"})
    blank = image_env.render()
    image_env.step(5)
    image = image_env.render()
    assert image.shape == (256, 512, 3) and image.dtype == np.uint8
    assert (image < 128).any(), "text is drawn"
    with pytest.raises(ConfigError, match="render_mode"):
        TextGenEnv(model=str(tiny_gpt2_dir), render_mode="banana")
    assert blank.shape == image.shape


def test_kl_coef_zero_loads_no_reference(tiny_gpt2_dir):
    env = make_env(tiny_gpt2_dir, kl_coef=0.0)
    assert env.unwrapped.batch.stepper is None
    env.reset(seed=0)
    rewards, info = run_episode(env, [50] * 6)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert np.isnan(info["kl_ref_logprob_sum"])
    with pytest.raises(ConfigError, match="reference"):
        env.unwrapped.kl_coef = 0.1


def test_sparse_and_dense_pay_the_same_total(tiny_gpt2_dir):
    totals = {}
    for penalty in ("dense", "sparse", "deferred"):
        env = make_env(tiny_gpt2_dir, kl_coef=0.3, kl_penalty=penalty)
        env.reset(seed=0, options={"prompt": "A quiet morning"})
        rewards, info = run_episode(env, [11, 12, 13, 14, 15, 16])
        totals[penalty] = (sum(rewards), rewards, info)
    assert totals["dense"][0] == pytest.approx(totals["sparse"][0], abs=1e-6)
    assert all(r == 0.0 for r in totals["sparse"][1][:-1])
    assert totals["deferred"][1] == totals["sparse"][1]  # deferred pays exactly what sparse pays
    assert len(totals["deferred"][2]["ref_logprobs"]) == totals["deferred"][2]["num_tokens"]
    dense_kl = sum(totals["dense"][1]) - totals["dense"][2]["score"]
    assert dense_kl == pytest.approx(0.3 * totals["dense"][2]["kl_ref_logprob_sum"], abs=1e-6)


def test_reward_model_swapped_through_options(tiny_gpt2_dir):
    def count_words(prompts, completions):
        return [float(len(c.split())) for c in completions]

    env = make_env(tiny_gpt2_dir, reward_model=count_words, kl_coef=0.0)
    env.reset(seed=0)
    _, info = run_episode(env, [100, 101, 102, 103, 104, 105])
    assert info["score"] == float(len(info["text"].split()))
    env = make_env(tiny_gpt2_dir, reward_model="length", reward_kwargs={"target_words": 3}, kl_coef=0.0)
    assert env.unwrapped.reward_model.name == "length"


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [1.0, 2.0], ["good"]])
def test_bad_reward_values_raise_naming_the_model(tiny_gpt2_dir, bad):
    def broken_reward(prompts, completions):
        return bad

    env = make_env(tiny_gpt2_dir, reward_model=broken_reward, kl_coef=0.0, max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardModelError, match="broken_reward"):
        env.step(7)


# ------------------------------------------------------------------------- exact KL by enumeration
@pytest.fixture(scope="module")
def micro_models(tmp_path_factory):
    """A 5-token vocabulary with a random policy and a random reference, far from uniform."""
    return {name: build_micro_model(tmp_path_factory.mktemp(name), seed, logit_scale=20.0)
            for name, seed in (("policy", 1), ("reference", 2))}


def sequence_logprob(model, prompt_ids, tokens):
    ids = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(tokens)), \
        [float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(tokens)]


@pytest.mark.parametrize("kl_penalty", ["dense", "sparse", "deferred"])
def test_kl_regularised_objective_is_exact_by_enumeration(micro_models, kl_penalty):
    beta = 0.7
    policy = GPT2LMHeadModel.from_pretrained(micro_models["policy"]).eval()
    reference = GPT2LMHeadModel.from_pretrained(micro_models["reference"]).eval()

    def reward(prompts, completions):
        return [c.count("a") - 0.5 * c.count("b") for c in completions]

    env = gym.make("TextGen-v0", model=str(micro_models["policy"]), reference_model=str(micro_models["reference"]),
                   reward_model=reward, kl_coef=beta, kl_penalty=kl_penalty, max_new_tokens=2, device="cpu")
    prompt = "a b"
    prompt_ids = env.unwrapped.tokenizer(prompt)["input_ids"]
    sequences = [[1]] + [[t1, t2] for t1 in range(5) if t1 != 1 for t2 in range(5)]
    direct, via_env, total_prob = 0.0, 0.0, 0.0
    for seq in sequences:
        logp_pi, per_token = sequence_logprob(policy, prompt_ids, seq)
        logp_ref, _ = sequence_logprob(reference, prompt_ids, seq)
        prob = np.exp(logp_pi)
        total_prob += prob
        text = " ".join({3: "a", 4: "b"}.get(t, "") for t in seq if t not in (0, 1, 2)).strip()
        direct += prob * (reward([prompt], [text])[0] - beta * (logp_pi - logp_ref))
        env.reset(options={"prompt": prompt})
        rewards, info = run_episode(env, seq)
        assert len(rewards) == len(seq)
        if kl_penalty == "deferred":  # each token's reference term, exact
            _, ref_per_token = sequence_logprob(reference, prompt_ids, seq)
            assert info["ref_logprobs"] == pytest.approx(ref_per_token, abs=1e-5)
        via_env += prob * (sum(rewards) - beta * sum(per_token))
    assert total_prob == pytest.approx(1.0, abs=1e-9)
    assert via_env == pytest.approx(direct, abs=1e-5)


# ------------------------------------------------------------------------------------ checkers
@pytest.mark.parametrize("task", [t.name for t in list_tasks()])
def test_gymnasium_check_env_passes_for_every_task(task):
    env = gym.make("TextGen-v0", task=task, max_new_tokens=4).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)


def test_sb3_check_env_passes():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(gym.make("TextGen-v0", max_new_tokens=4).unwrapped, warn=True)


def test_all_tasks_reset_offline():
    names = [t.name for t in list_tasks()]
    assert {"sentiment", "concepts", "toxicity", "arithmetic", "length", "define"} <= set(names)
    for name in names:
        env = gym.make("TextGen-v0", task=name, kl_coef=0.0)
        _, info = env.reset(seed=0)
        assert info["prompt"]



def test_text_envs_never_imports_stable_baselines3():
    import subprocess
    import sys

    code = ("import sys, gymnasium as gym, text_envs, text_envs.vector_env, text_envs.rewards, text_envs.tasks, "
            "text_envs.models; gym.make('TextGen-v0', kl_coef=0.0); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('stable_baselines3', 'sb3_contrib', 'agents')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_loaded_policy_model_is_snapshotted_not_frozen_as_reference(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    policy_lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    env = gym.make("TextGen-v0", model=policy_lm, max_new_tokens=3).unwrapped
    reference = env.batch.stepper.model
    assert reference is not policy_lm
    assert all(p.requires_grad for p in policy_lm.parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        next(policy_lm.parameters()).add_(1.0)  # training the policy must not move the reference
    assert not torch.equal(next(policy_lm.parameters()), next(reference.parameters()))
