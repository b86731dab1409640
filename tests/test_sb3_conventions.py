"""The stable-baselines3 conventions users rely on: make_vec_env (Dummy and Subproc), load without an env
for predict / evaluate_policy, and typed errors for observations the policy cannot read."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

import text_envs  # noqa: F401  (registers TextGen-v0)
from agents import GRPO, TokenPPO, TransformerPolicy
from tests.micro import build_micro_model, micro_env
from text_envs.errors import InvalidObservationError

ENV_KWARGS = {"task": "sentiment", "max_new_tokens": 4, "kl_coef": 0.05}


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-sb3"), seed=0)


def test_make_vec_env_and_stock_ppo(tiny_gpt2_dir):
    env = make_vec_env("TextGen-v0", n_envs=2, seed=0, env_kwargs={**ENV_KWARGS, "model": str(tiny_gpt2_dir)})
    assert env.get_attr("render_mode") == ["rgb_array", "rgb_array"]
    model = PPO(TransformerPolicy, env, policy_kwargs={"model": str(tiny_gpt2_dir)}, n_steps=8, batch_size=16,
                n_epochs=1, seed=0)
    model.learn(16)
    assert model.num_timesteps == 16
    assert len(env.render(mode="rgb_array").shape) == 3


def test_make_vec_env_subproc(tiny_gpt2_dir):
    # "module:id": each spawned worker imports text_envs (which registers TextGen-v0), Gymnasium's convention
    env = make_vec_env("text_envs:TextGen-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                       vec_env_kwargs={"start_method": "spawn"},
                       env_kwargs={**ENV_KWARGS, "model": str(tiny_gpt2_dir)})
    try:
        obs = env.reset()
        assert obs["input_ids"].shape[0] == 2
        obs, rewards, dones, infos = env.step(np.array([5, 6]))
        assert rewards.shape == (2,) and np.isfinite(rewards).all()
    finally:
        env.close()


@pytest.mark.parametrize("cls, extra", [(TokenPPO, {"batch_size": 4}), (GRPO, {"batch_size": 4, "group_size": 2})])
def test_load_without_env_predicts_and_evaluates(cls, extra, micro_dir, tmp_path):
    env = micro_env(micro_dir, n=4)
    model = cls(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=4, seed=0, device="cpu",
                **extra)
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = cls.load(tmp_path / "model.zip", device="cpu")  # no env: as stock PPO.load allows
    assert loaded.env is None and loaded.kl_coef == model.kl_coef
    obs = env.reset()
    actions, _ = loaded.predict(obs, deterministic=True)
    expected, _ = model.predict(obs, deterministic=True)
    assert np.array_equal(actions, expected)
    mean_reward, _ = evaluate_policy(loaded, micro_env(micro_dir, n=4), n_eval_episodes=4, warn=False)
    assert np.isfinite(mean_reward)


def test_policy_rejects_observations_it_cannot_read(micro_dir):
    env = micro_env(micro_dir, n=4)
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=4, batch_size=4,
                     seed=0, device="cpu")
    obs = env.reset()
    too_large = {**obs, "input_ids": obs["input_ids"].copy()}
    too_large["input_ids"][0, -1] = 5  # the micro vocabulary has ids 0..4
    with pytest.raises(InvalidObservationError, match="0..4"):
        model.predict(too_large)
    normalised = VecNormalize(micro_env(micro_dir, n=4), norm_obs=True, norm_reward=False)
    with pytest.raises(InvalidObservationError, match="integers|0..4"):
        model.predict(normalised.reset())
