"""TokenPPO: learning, one forward per minibatch, the exact per-token reward, KL control, save/load, logs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import obs_as_tensor

from agents import TokenPPO, TransformerPolicy
from agents.buffers import Episode, SequenceRolloutBuffer
from tests.micro import build_micro_model, micro_env, prob_of_a
from text_envs.errors import ConfigError


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-token-ppo"), seed=0)


def test_token_ppo_learns_to_emit_the_rewarded_token(micro_dir):
    env = micro_env(micro_dir)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=24,
                     learning_rate=3e-3, batch_size=16, seed=0, device="cpu")
    before = prob_of_a(model.policy, env)
    model.learn(1536)
    after = prob_of_a(model.policy, env)
    assert before < 0.35 and after > 0.6, (before, after)


def test_update_makes_one_forward_per_minibatch(micro_dir):
    env = micro_env(micro_dir)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=6, batch_size=4,
                     n_epochs=2, seed=0, device="cpu")
    model.learn(48)  # one rollout + one update
    calls = []
    original = model.policy.lm.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    model.policy.lm.forward = spy
    model.train()
    n_sequences = len(model.rollout_buffer.episodes)
    expected = 2 * int(np.ceil(n_sequences / 4))
    assert len(calls) == expected, (len(calls), n_sequences)
    assert all(shape[1] > 3 for shape in calls)  # whole sequences, not single tokens


def test_per_token_reward_adds_the_agent_kl_half():
    buffer = SequenceRolloutBuffer(num_envs=1, pad_id=0, device=torch.device("cpu"))
    buffer.episodes = [Episode(prompt_ids=[5], actions=[1, 2], logprobs=[-1.0, -2.0], values=[0.0, 0.0],
                               rewards=[-0.3, 0.9], kl_coefs=[0.1, 0.1], info={"score": 1.0})]
    rewards, mask = buffer.total_rewards()
    # r_t - beta * log pi_old(a_t|s_t)
    assert rewards[0].tolist() == pytest.approx([-0.3 + 0.1, 0.9 + 0.2])
    assert mask.tolist() == [[1.0, 1.0]]


def test_buffer_moves_a_deferred_kl_term_back_onto_its_tokens():
    buffer = SequenceRolloutBuffer(num_envs=1, pad_id=0, device=torch.device("cpu"))
    obs = {"input_ids": np.array([[0, 5]]), "attention_mask": np.array([[0, 1]])}
    # kl_penalty="deferred": the env paid 0.1 * (-1 - 3) + score 2 on the last token, and reports each token's term
    info = {"score": 2.0, "kl_coef": 0.1, "ref_logprobs": [-1.0, -3.0], "kl_ref_logprob_sum": -4.0}
    for step, (reward, done) in enumerate(((0.0, False), (2.0 - 0.4, True))):
        buffer.add(obs, np.array([7 + step]), np.array([-0.5]), np.array([0.0]), np.array([reward]),
                   np.array([done]), [info if done else {}], kl_coef=0.1)
    (episode,) = buffer.episodes
    assert episode.rewards == pytest.approx([-0.1, 2.0 - 0.3])  # the dense mode's: 0.1 * log pi_ref per token
    rewards, _ = buffer.total_rewards()
    assert rewards[0].tolist() == pytest.approx([-0.1 + 0.05, 2.0 - 0.3 + 0.05])


def test_adaptive_kl_controller_updates_the_env(micro_dir):
    env = micro_env(micro_dir, kl_coef=0.2)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=6, kl_target=1e-4,
                     kl_horizon=100, seed=0, device="cpu")
    model.learn(96)
    assert model.kl_coef != pytest.approx(0.2)
    assert env.get_attr("kl_coef")[0] == pytest.approx(model.kl_coef)


def test_fixed_kl_coef_is_pushed_to_the_env(micro_dir):
    env = micro_env(micro_dir, kl_coef=0.2)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, kl_coef=0.05, device="cpu")
    assert env.get_attr("kl_coef")[0] == pytest.approx(0.05) and model.kl_coef == pytest.approx(0.05)


def test_logs_objective_and_losses(micro_dir, tmp_path):
    env = micro_env(micro_dir, kl_coef=0.1)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=6, seed=0,
                     device="cpu")
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(144)
    with open(tmp_path / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = set(rows[-1])
    for key in ("objective/score", "objective/kl", "objective/kl_coef", "losses/policy_loss", "losses/value_loss",
                "losses/entropy", "rollout/ep_len_mean"):
        assert key in keys, key
    assert any(row["objective/kl"] not in ("", "nan") for row in rows)


def test_save_load_round_trip(micro_dir, tmp_path):
    env = micro_env(micro_dir)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=6,
                     learning_rate=1e-2, seed=0, device="cpu")
    model.learn(48)
    model.save(tmp_path / "token_ppo.zip")
    loaded = TokenPPO.load(tmp_path / "token_ppo.zip", env=env, device="cpu")
    obs = obs_as_tensor(env.reset(), "cpu")
    with torch.no_grad():
        assert torch.allclose(model.policy.lm_forward(obs).logits, loaded.policy.lm_forward(obs).logits)
    assert loaded.kl_coef == model.kl_coef and loaded.batch_size == model.batch_size
    loaded.learn(48)  # and it keeps training


def test_bad_hyperparameters_are_rejected(micro_dir):
    env = micro_env(micro_dir)
    with pytest.raises(ConfigError, match="clip_range"):
        TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, clip_range=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, batch_size=0)


@pytest.mark.parametrize("algo", ["token-ppo", "ppo"])
def test_progress_bar_counts_generated_tokens_and_ends_at_the_true_count(micro_dir, algo):
    from stable_baselines3 import PPO

    from agents.callbacks import TokenProgressBar

    env = micro_env(micro_dir)
    cls, extra = (TokenPPO, {"batch_size": 4}) if algo == "token-ppo" else (PPO, {"batch_size": 40})
    model = cls(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=5, seed=0, device="cpu",
                **extra)
    bar = TokenProgressBar()
    model.learn(50, callback=bar)  # rollouts of 8 slots x 5 steps: the last one passes the budget
    assert model.num_timesteps > 50
    assert bar.pbar.n == model.num_timesteps and bar.pbar.total == model.num_timesteps
