"""REINFORCE, RLOO and GRPO: learning on the micro model, advantages on hand-computed values, grouping."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.utils import obs_as_tensor

from agents import GRPO, RLOO, Reinforce, TransformerPolicy, make_text_vec_env
from agents.algos.advantages import (
    broadcast_to_tokens,
    group_normalized_advantages,
    leave_one_out_advantages,
    moving_average_baseline,
    sequence_returns,
)
from agents.buffers import Episode, SequenceRolloutBuffer
from tests.micro import TOKEN_A, build_micro_model, count_a, micro_task
from text_envs.errors import ConfigError


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-critic-free"), seed=0)


def micro_env(micro_dir, n=8, kl_coef=0.0, reset_options=None):
    return make_text_vec_env(n, reset_options=reset_options,
                             env_kwargs={"model": str(micro_dir), "task": micro_task(3), "reward_model": count_a,
                                         "kl_coef": kl_coef})


def prob_of_a(policy, env) -> float:
    obs = obs_as_tensor(env.reset(), policy.device)
    with torch.no_grad():
        return float(policy.get_distribution(obs).distribution.probs[:, TOKEN_A].mean())


# ------------------------------------------------------------------------------------- advantages
def test_sequence_returns_sum_real_tokens():
    rewards = torch.tensor([[1.0, 2.0, 9.0], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert sequence_returns(rewards, mask).tolist() == pytest.approx([3.0, 0.5])


def test_leave_one_out_advantages_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    # group 1: 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3; group 2: 0 - 4/3 (x3), 4 - 0
    expected = [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2, -4 / 3, -4 / 3, -4 / 3, 4.0]
    assert leave_one_out_advantages(returns, 4).tolist() == pytest.approx(expected)


def test_group_normalized_advantages_by_hand():
    returns = torch.tensor([1.0, 3.0, 5.0, 5.0])
    # group (1, 3): mean 2, unbiased std sqrt(2); group (5, 5): std 0 -> advantages 0
    out = group_normalized_advantages(returns, 2, eps=0.0 + 1e-12)
    assert out[:2].tolist() == pytest.approx([-1 / 2**0.5, 1 / 2**0.5])
    assert out[2:].tolist() == pytest.approx([0.0, 0.0])
    assert group_normalized_advantages(returns, 2, scale_rewards=False).tolist() == pytest.approx([-1, 1, 0, 0])


def test_group_advantages_reject_incomplete_groups():
    with pytest.raises(ConfigError, match="groups"):
        leave_one_out_advantages(torch.zeros(5), 4)
    with pytest.raises(ConfigError, match="group_size"):
        group_normalized_advantages(torch.zeros(4), 1)


def test_moving_average_baseline_and_broadcast():
    assert moving_average_baseline(None, torch.tensor([1.0, 3.0]), 0.9) == pytest.approx(2.0)
    assert moving_average_baseline(2.0, torch.tensor([4.0]), 0.75) == pytest.approx(0.75 * 2 + 0.25 * 4)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask).tolist() == [[2.0, 2.0], [-1.0, 0.0]]


# ------------------------------------------------------------------------------------------ groups
def test_buffer_releases_only_complete_groups():
    buffer = SequenceRolloutBuffer(num_envs=2, pad_id=0, device=torch.device("cpu"), group_size=2)
    obs = {"input_ids": torch.tensor([[5, 6], [5, 6]]).numpy(), "attention_mask": torch.ones(2, 2).numpy()}
    info = [{"group": 0, "group_episode": 0}, {}]
    buffer.add(obs, [1, 1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [True, False], info, 0.0)
    assert buffer.episodes == [] and buffer.num_tokens == 0 and len(buffer.pending) == 1
    buffer.add(obs, [1, 1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [False, True], [{}, {"group": 0, "group_episode": 0}],
               0.0)
    assert len(buffer.episodes) == 2 and buffer.pending == {} and buffer.groups() == [[0, 1]]


@pytest.mark.parametrize("algo", [RLOO, GRPO])
def test_grouped_episodes_share_prompts(micro_dir, algo):
    env = micro_env(micro_dir, n=8)
    model = algo(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, group_size=4, n_steps=6,
                 seed=0, device="cpu")
    assert env.reset_options["group_size"] == 4
    seen = []
    model.train = lambda: seen.append([list(e.prompt_ids) for e in model.rollout_buffer.episodes])
    model.learn(96)
    assert seen and all(len(prompts) % 4 == 0 and prompts for prompts in seen)
    for prompts in seen:
        for start in range(0, len(prompts), 4):
            group = prompts[start:start + 4]
            assert all(p == group[0] for p in group), group
    # and prompts do differ across groups somewhere (the grouping is not trivial)
    assert len({tuple(p) for prompts in seen for p in prompts}) > 1


def test_grouped_algorithms_check_the_env(micro_dir):
    with pytest.raises(ConfigError, match="divisible"):
        RLOO(TransformerPolicy, micro_env(micro_dir, n=6), policy_kwargs={"model": str(micro_dir)}, group_size=4)
    env = micro_env(micro_dir, n=8, reset_options={"group_size": 2})
    with pytest.raises(ConfigError, match="group_size"):
        GRPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, group_size=4)
    with pytest.raises(ConfigError, match="baseline_decay"):
        Reinforce(TransformerPolicy, micro_env(micro_dir), policy_kwargs={"model": str(micro_dir)}, baseline_decay=1)


# ---------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("algo, kwargs", [
    (Reinforce, {}),
    (RLOO, {"group_size": 4}),
    (GRPO, {"group_size": 4}),
])
def test_critic_free_algorithms_learn_to_emit_the_rewarded_token(micro_dir, algo, kwargs):
    env = micro_env(micro_dir)
    model = algo(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=24, learning_rate=3e-3,
                 batch_size=16, seed=0, device="cpu", **kwargs)
    before = prob_of_a(model.policy, env)
    model.learn(1536)
    after = prob_of_a(model.policy, env)
    assert before < 0.35 and after > 0.6, (before, after)


def test_kl_regularised_return_and_save_load(micro_dir, tmp_path):
    env = micro_env(micro_dir, kl_coef=0.1)
    model = RLOO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, group_size=2, n_steps=6, seed=0,
                 device="cpu")
    model.learn(48)
    model.save(tmp_path / "rloo.zip")
    loaded = RLOO.load(tmp_path / "rloo.zip", env=env, device="cpu")
    assert loaded.group_size == 2 and loaded.rollout_buffer.group_size == 2
    loaded.learn(48)
    episode = Episode(prompt_ids=[3], actions=[3, 1], logprobs=[-1.0, -0.5], rewards=[-0.2, 0.7],
                      kl_coefs=[0.1, 0.1], values=[0.0, 0.0])
    buffer = SequenceRolloutBuffer(1, 0, torch.device("cpu"))
    buffer.episodes = [episode]
    rewards, mask = buffer.total_rewards()
    # env reward (score + beta log pi_ref) minus beta log pi_old, summed
    assert float(sequence_returns(rewards, mask)[0]) == pytest.approx(-0.2 + 0.7 + 0.1 * 1.5)


@pytest.mark.parametrize("ent_coef, graph", [(0.0, False), (0.01, True)])
def test_entropy_has_a_graph_only_when_it_is_in_the_loss(micro_dir, ent_coef, graph, monkeypatch):
    """With ent_coef == 0 the entropy is only logged: evaluated without autograd (no vocabulary-sized backward);
    with an entropy bonus it keeps its graph."""
    env = micro_env(micro_dir, n=4)
    model = GRPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=3, batch_size=4,
                 group_size=4, ent_coef=ent_coef, seed=0, device="cpu")
    seen = []
    evaluate = type(model).evaluate_batch

    def spy(self, batch, entropy_grad=True):
        logprobs, entropy, values = evaluate(self, batch, entropy_grad)
        seen.append((entropy.requires_grad, float(entropy.detach().mean())))
        return logprobs, entropy, values

    monkeypatch.setattr(type(model), "evaluate_batch", spy)
    model.learn(12)
    assert seen and all(flag is graph and mean > 0 for flag, mean in seen)  # still computed (and logged)
