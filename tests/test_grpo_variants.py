"""GRPO's ``loss_type`` variants (``grpo``, ``dr_grpo``, ``dapo``): advantages and losses on hand-computed
small batches, DAPO's dynamic sampling, configuration errors, the registry and short learning runs."""

from __future__ import annotations

import math

import pytest
import torch
from stable_baselines3.common.logger import configure

from agents import GRPO, TransformerPolicy, make_text_vec_env
from agents.algorithm_registry import ALGORITHMS, make_algorithm
from agents.algos.advantages import informative_groups
from agents.algos.grpo import (
    DAPO_CLIP_RANGE_HIGH,
    clipped_surrogate_terms,
    constant_normalized_loss,
    resolve_clip_ranges,
    sequence_sum_loss,
    take_groups_up_to,
    token_mean_loss,
)
from agents.buffers import Episode, SequenceBatch
from agents.rl_math import clipped_policy_loss
from tests.micro import build_micro_model, count_a, micro_env, micro_task, prob_of_a
from text_envs.errors import ConfigError

MAX_NEW_TOKENS = 3  # micro_task(3)


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-grpo-variants"), seed=0)


def env_with_reward(micro_dir, reward_model, n=8):
    """The micro env with another reward (kl_coef 0: the returns are the rewards)."""
    return make_text_vec_env(n, env_kwargs={"model": str(micro_dir), "task": micro_task(MAX_NEW_TOKENS),
                                            "reward_model": reward_model, "kl_coef": 0.0})


def grpo(micro_dir, env=None, **kwargs):
    model = GRPO(TransformerPolicy, env if env is not None else micro_env(micro_dir),
                 policy_kwargs={"model": str(micro_dir)}, group_size=2, seed=0, device="cpu", **kwargs)
    model.set_logger(configure(None, []))
    return model


# A small batch: 2 sequences of 3 and 2 real tokens; ratios pi / pi_old 1.5, 0.5, 1.0 and 1.1, 0.7 (and a
# padded position with a ratio of 9 that must never count); advantages +1 and -1 on every token.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD_LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]])
LOGP = OLD_LOGP + torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 0.7, 9.0]]))
ADVANTAGES = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
# per-token terms -min(rho A, clip(rho) A), clip 0.2 (ratio in [0.8, 1.2]):
#   A=+1: 1.5 -> -1.2, 0.5 -> -0.5, 1.0 -> -1.0;  A=-1: 1.1 -> +1.1, 0.7 -> +0.8   sum -0.8 over 5 tokens
# DAPO's clip-higher [0.8, 1.28] changes only the first: 1.5 -> -1.28                sum -0.88
SYMMETRIC_SUM, DAPO_SUM, TOKENS = -0.8, -0.88, 5


def batch(advantages=ADVANTAGES, mask=MASK, old_logp=OLD_LOGP) -> SequenceBatch:
    rows, width = mask.shape
    zeros = torch.zeros(rows, width)
    ids = torch.ones(rows, width + 1, dtype=torch.long)
    return SequenceBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask,
                         actions=torch.ones(rows, width, dtype=torch.long), old_logprobs=old_logp, old_values=zeros,
                         advantages=advantages, returns=zeros, index=torch.arange(rows))


# ------------------------------------------------------------------------------------- advantages
def test_advantages_by_hand_for_each_variant(micro_dir):
    returns = torch.tensor([1.0, 3.0, 5.0, 5.0])  # groups (1, 3): mean 2, unbiased std sqrt(2); (5, 5): std 0
    scaled = [-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0, 0.0]
    env = micro_env(micro_dir)
    assert grpo(micro_dir, env).sequence_advantages(returns).tolist() == pytest.approx(scaled)
    assert grpo(micro_dir, env, loss_type="dapo").sequence_advantages(returns).tolist() == pytest.approx(scaled)
    # Dr. GRPO: no std scaling, only the group mean removed
    assert grpo(micro_dir, env, loss_type="dr_grpo").sequence_advantages(returns).tolist() == [-1.0, 1.0, 0.0, 0.0]


def test_informative_groups_by_hand():
    returns = torch.tensor([1.0, 3.0, 5.0, 5.0, 0.0, 0.0, 0.0, 1e-3])
    assert informative_groups(returns, 2).tolist() == [True, False, False, True]
    assert informative_groups(returns, 4).tolist() == [True, True]
    with pytest.raises(ConfigError, match="groups of 3"):
        informative_groups(returns, 3)


# ------------------------------------------------------------------------------------------ losses
def test_clipped_surrogate_terms_by_hand():
    terms, outside = clipped_surrogate_terms(LOGP, OLD_LOGP, ADVANTAGES, 0.2, 0.2)
    assert torch.allclose(terms * MASK, torch.tensor([[-1.2, -0.5, -1.0], [1.1, 0.8, 0.0]]))
    assert outside.tolist() == [[True, True, False], [False, True, True]]  # the padded 9 is outside too
    terms, _ = clipped_surrogate_terms(LOGP, OLD_LOGP, ADVANTAGES, 0.2, DAPO_CLIP_RANGE_HIGH)
    assert torch.allclose(terms * MASK, torch.tensor([[-1.28, -0.5, -1.0], [1.1, 0.8, 0.0]]))
    plain, outside = clipped_surrogate_terms(LOGP, OLD_LOGP, ADVANTAGES, None, None)
    assert torch.equal(plain, -(ADVANTAGES * LOGP)) and not outside.any()


def test_reductions_by_hand():
    terms = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])  # the 100 is padding
    assert float(token_mean_loss(terms, MASK)) == pytest.approx(15 / 5)
    assert float(sequence_sum_loss(terms, MASK)) == pytest.approx((6 + 9) / 2)
    # Dr. GRPO: sum / (B * max completion length), whatever the sequences' lengths
    assert float(constant_normalized_loss(terms, MASK, 4)) == pytest.approx(15 / (2 * 4))
    with pytest.raises(ConfigError, match="completion of 3 tokens exceeds max_completion_length=2"):
        constant_normalized_loss(terms, MASK, 2)
    with pytest.raises(ConfigError, match="max_completion_length must be a positive int, got 0"):
        constant_normalized_loss(terms, MASK, 0)


def test_policy_losses_by_hand(micro_dir):
    env = micro_env(micro_dir)
    loss, clip_fraction = grpo(micro_dir, env).policy_loss(LOGP, batch())
    assert float(loss) == pytest.approx(SYMMETRIC_SUM / TOKENS) and float(clip_fraction) == pytest.approx(3 / 5)
    loss, clip_fraction = grpo(micro_dir, env, loss_type="dapo").policy_loss(LOGP, batch())
    assert float(loss) == pytest.approx(DAPO_SUM / TOKENS) and float(clip_fraction) == pytest.approx(3 / 5)
    dr = grpo(micro_dir, env, loss_type="dr_grpo")
    assert dr.max_completion_length == MAX_NEW_TOKENS  # read from the env
    loss, _ = dr.policy_loss(LOGP, batch())
    assert float(loss) == pytest.approx(SYMMETRIC_SUM / (2 * MAX_NEW_TOKENS))
    # without clipping, "grpo" keeps loss_reduction: -sum_t A log pi per sequence, averaged over sequences
    plain = grpo(micro_dir, env, clip_range=None, loss_reduction="sequence")
    loss, clip_fraction = plain.policy_loss(LOGP, batch())
    expected = -(LOGP[0].sum() - LOGP[1, :2].sum()) / 2
    assert float(loss) == pytest.approx(float(expected)) and float(clip_fraction) == 0.0


def test_grpo_loss_is_the_previous_one_bit_for_bit(micro_dir):
    generator = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(4, 6, generator=generator), -torch.rand(4, 6, generator=generator)
    advantages = torch.randn(4, 1, generator=generator).expand(4, 6).clone()
    mask = (torch.arange(6)[None] < torch.tensor([[6], [3], [1], [5]])).float()
    loss, clip_fraction = grpo(micro_dir).policy_loss(logp, batch(advantages, mask, old))
    expected, expected_fraction = clipped_policy_loss(logp, old, advantages, mask, 0.2)
    assert torch.equal(loss, expected) and torch.equal(clip_fraction, expected_fraction)


# ------------------------------------------------------------------------------------ configuration
def test_clip_ranges_per_loss_type():
    assert resolve_clip_ranges("grpo", 0.2, None, None) == (0.2, 0.2)
    assert resolve_clip_ranges("dr_grpo", 0.1, None, None) == (0.1, 0.1)
    assert resolve_clip_ranges("dapo", 0.2, None, None) == (0.2, 0.28)
    assert resolve_clip_ranges("grpo", None, None, None) == (None, None)
    assert resolve_clip_ranges("grpo", 0.2, 0.1, 0.3) == (0.1, 0.3)
    assert resolve_clip_ranges("dapo", None, 0.1, 0.4) == (0.1, 0.4)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss_type": "ppo"}, "loss_type must be one of .*'dapo'.*, got 'ppo'"),
    ({"loss_type": "dr_grpo", "scale_rewards": True}, "scale_rewards=True contradicts it"),
    ({"clip_range_low": 1.5}, r"clip_range_low must be in \(0, 1\), got 1.5"),
    ({"clip_range_high": -0.1}, "clip_range_high must be a positive finite number, got -0.1"),
    ({"clip_range": None, "clip_range_high": 0.3}, "set both"),
    ({"max_refill_rollouts": 0}, "max_refill_rollouts must be a positive int, got 0"),
    ({"max_completion_length": 0}, "max_completion_length must be a positive int or None, got 0"),
])
def test_bad_variant_settings(micro_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        grpo(micro_dir, **kwargs)


def test_group_size_one_is_rejected(micro_dir):
    with pytest.raises(ConfigError, match="group_size >= 2"):
        GRPO(TransformerPolicy, micro_env(micro_dir), policy_kwargs={"model": str(micro_dir)}, group_size=1)


# ---------------------------------------------------------------------------------- dynamic sampling
def episodes(lengths: list[int]) -> list[Episode]:
    return [Episode(prompt_ids=[3], actions=[3] * n) for n in lengths]


def test_take_groups_up_to_by_hand():
    groups = [episodes([2, 3]), episodes([1, 1]), episodes([4, 4])]  # 5, 2, 8 tokens
    assert take_groups_up_to(groups, 6) == (groups[:2], 1)  # 5 < 6, 5 + 2 >= 6: the third is left over
    assert take_groups_up_to(groups, 5) == (groups[:1], 2)
    assert take_groups_up_to(groups, 100) == (groups, 0)
    assert take_groups_up_to(groups, 0) == ([], 3)


def reward_only_for_long_prompts(prompts: list[str], completions: list[str]) -> list[float]:
    """count_a, except for the one-word prompts ("a", "b"), whose groups then have zero variance."""
    scores = count_a(prompts, completions)
    return [0.0 if len(p.split()) == 1 else s for p, s in zip(prompts, scores)]


def test_dapo_trains_only_on_informative_groups_of_a_full_batch(micro_dir):
    env = env_with_reward(micro_dir, reward_only_for_long_prompts)
    model = GRPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, group_size=4, n_steps=6,
                 seed=0, device="cpu", loss_type="dapo")
    updates, rollouts = [], []
    real_advantages, real_train = model.sequence_advantages, GRPO.train

    def spy_advantages(returns):
        updates.append((returns.clone(), [e.info["prompt"] for e in model.rollout_buffer.episodes],
                        model.rollout_buffer.num_tokens))
        return real_advantages(returns)

    def spy_train():
        rollouts.append(len(model.rollout_buffer.episodes))
        real_train(model)

    model.sequence_advantages, model.train = spy_advantages, spy_train
    model.learn(480)
    target = model.n_steps * model.n_envs
    assert updates and len(rollouts) > len(updates)  # some rollouts were not enough on their own: refilled
    for returns, prompts, tokens in updates:
        assert informative_groups(returns, 4).all()  # no zero-variance group reached an update
        assert all(len(p.split()) > 1 for p in prompts)  # the one-word prompts' groups were all dropped
        assert tokens >= target  # a full batch, counted in informative tokens only
    assert model.num_timesteps >= 480  # the budget counts every generated token, dropped ones included


def test_dapo_without_any_signal_never_updates(micro_dir):
    env = env_with_reward(micro_dir, lambda prompts, completions: [0.5] * len(prompts))
    model = GRPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, group_size=4, n_steps=6,
                 seed=0, device="cpu", loss_type="dapo", max_refill_rollouts=2)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(240)
    assert model._n_updates == 0 and model._dapo_pool == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))


def test_variant_settings_and_dapo_pool_survive_save_and_load(micro_dir, tmp_path):
    env = micro_env(micro_dir)
    model = grpo(micro_dir, env, loss_type="dapo", clip_range_high=0.3, max_refill_rollouts=3)
    model._dapo_pool, model._dapo_rollouts = [episodes([2, 1]), episodes([3, 3])], 1
    model.save(tmp_path / "dapo.zip")
    loaded = GRPO.load(tmp_path / "dapo.zip", env=env, device="cpu")
    assert (loaded.loss_type, loaded.clip_range_low, loaded.clip_range_high, loaded.max_refill_rollouts) == (
        "dapo", 0.2, 0.3, 3)
    assert [[len(e) for e in g] for g in loaded._dapo_pool] == [[2, 1], [3, 3]] and loaded._dapo_rollouts == 1
    dr = grpo(micro_dir, loss_type="dr_grpo")
    dr.save(tmp_path / "dr.zip")
    loaded = GRPO.load(tmp_path / "dr.zip", device="cpu")  # no env: the constant comes from the file
    assert (loaded.loss_type, loaded.scale_rewards, loaded.max_completion_length) == ("dr_grpo", False, 3)


# -------------------------------------------------------------------------------------- registry, CLI
def test_registry_entries(tiny_gpt2_dir):
    assert ALGORITHMS["dr-grpo"].defaults["loss_type"] == "dr_grpo"
    assert ALGORITHMS["dapo"].defaults["loss_type"] == "dapo"
    env_kwargs = {"model": str(tiny_gpt2_dir), "task": "sentiment", "kl_coef": 0.05, "max_new_tokens": 5}
    for name, loss_type in (("dr-grpo", "dr_grpo"), ("dapo", "dapo")):
        agent = make_algorithm(name, env_kwargs=env_kwargs, num_envs=4, model=str(tiny_gpt2_dir), device="cpu")
        assert isinstance(agent, GRPO) and agent.loss_type == loss_type
        if name == "dr-grpo":
            assert not agent.scale_rewards and agent.max_completion_length == 5
        else:
            assert (agent.clip_range_low, agent.clip_range_high) == (0.2, 0.28)
        agent.env.close()


def test_cli_trains_dapo(tiny_gpt2_dir, tmp_path):
    from agents.cli import main

    out = tmp_path / "dapo"
    assert main(["train", "--algo", "dapo", "--model", str(tiny_gpt2_dir), "--timesteps", "96", "--num-envs", "4",
                 "--eval-n", "4", "--max-new-tokens", "6", "--threads", "1", "--out", str(out)]) == 0
    assert GRPO.load(out / "model.zip", device="cpu").loss_type == "dapo"


# ---------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("loss_type, timesteps", [("dr_grpo", 1536), ("dapo", 3072)])
def test_variants_learn_to_emit_the_rewarded_token(micro_dir, loss_type, timesteps):
    """DAPO gets twice the budget: as the policy converges most groups become all-'a' (zero variance) and
    are dropped, so fewer of its generated tokens reach an update."""
    env = micro_env(micro_dir)
    model = GRPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=24, learning_rate=3e-3,
                 batch_size=16, seed=0, device="cpu", group_size=4, loss_type=loss_type)
    before = prob_of_a(model.policy, env)
    model.learn(timesteps)
    after = prob_of_a(model.policy, env)
    assert before < 0.35 and after > 0.6, (before, after)
