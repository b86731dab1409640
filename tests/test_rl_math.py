"""The core math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agents.kl_control import AdaptiveKLController, FixedKLController
from agents.rl_math import (
    MASKED_LOGIT,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    filter_mask,
    gae,
    gather_logprobs,
    kl_estimate,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    process_logits,
)
from text_envs.errors import ConfigError


def test_gae_over_padded_sequences_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 9.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.3, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: deltas = [0 + .4 - .2, 0 + .6 - .4, 1 + 0 - .6] = [.2, .2, .4]
    # A2 = .4; A1 = .2 + .5 * .4 = .4; A0 = .2 + .5 * .4 = .4
    assert adv[0].tolist() == pytest.approx([0.4, 0.4, 0.4])
    # row 1 has one real token: A0 = .5 - .3 = .2; padding is ignored and zeroed
    assert adv[1].tolist() == pytest.approx([0.2, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.6, 0.8, 1.0])
    assert ret[1].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_gae_with_discount():
    adv, _ = gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert adv[0].tolist() == pytest.approx([1.5, 1.0])


def test_masked_whiten_and_mean():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(masked_mean(values, mask)) == pytest.approx(2.0)
    white = masked_whiten(values, mask)
    assert white[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
    scaled = masked_whiten(values, mask, shift_mean=False)
    assert scaled[0, :2].tolist() == pytest.approx([1.0, 3.0], abs=1e-4)


def test_kl_estimators_by_hand():
    logp, logp_ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    log_r = math.log(2.0)
    assert float(kl_estimate(logp, logp_ref, "k1")) == pytest.approx(log_r)
    assert float(kl_estimate(logp, logp_ref, "k2")) == pytest.approx(0.5 * log_r**2)
    assert float(kl_estimate(logp, logp_ref, "k3")) == pytest.approx(0.5 - 1 + log_r)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, logp_ref, "k4")


def test_gather_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    tokens = torch.tensor([[0, 2]])
    assert gather_logprobs(logits, tokens)[0].tolist() == pytest.approx([math.log(0.5), math.log(0.8)], abs=1e-6)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert float(entropy_from_logits(logits)[0, 0]) == pytest.approx(expected, abs=1e-6)


def test_process_logits_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top2 = process_logits(logits, top_k=2)
    assert torch.softmax(top2, -1).tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=1e-6)
    nucleus = process_logits(logits, top_p=0.7)  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7 -> keep two
    assert (nucleus > MASKED_LOGIT / 2).tolist() == [True, True, False, False]
    assert filter_mask(logits, top_p=0.5).tolist() == [True, False, False, False]
    hot = torch.softmax(process_logits(logits, temperature=2.0), -1)
    assert hot.tolist() == pytest.approx(torch.softmax(logits / 2, -1).tolist())


def test_clipped_losses_by_hand():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.9]]))  # ratios 1.5 (clipped to 1.2) and 0.9
    adv = torch.tensor([[1.0, -1.0]])
    loss, frac = clipped_policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert float(loss) == pytest.approx(-(1.2 + -0.9) / 2)
    assert float(frac) == pytest.approx(0.5)
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # token 0: unclipped 1, clipped (0.2)^2 = .04 -> max 1; token 1: 1 and 1 -> mean .5 * (1 + 1) / 2
    assert float(clipped_value_loss(values, old_values, returns, mask, 0.2)) == pytest.approx(0.5)
    assert float(clipped_value_loss(values, old_values, returns, mask, None)) == pytest.approx(0.5)


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    assert fixed.update(100.0, 1000) == 0.1
    adaptive = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert adaptive.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at 0.2
    assert adaptive.update(6.0 * 0.95, 1000) == pytest.approx(0.1 * 1.02 * (1 - 0.05))
    with pytest.raises(ConfigError):
        AdaptiveKLController(0.0, 6.0, 1000)


def test_logprobs_and_entropy_match_the_separate_functions():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3))
    logp, entropy = logprobs_and_entropy(logits, tokens, entropy_grad=False)
    assert torch.allclose(logp, gather_logprobs(logits, tokens))
    assert torch.allclose(entropy, entropy_from_logits(logits))
    assert logp.requires_grad and not entropy.requires_grad
    _, entropy = logprobs_and_entropy(logits, tokens, entropy_grad=True)
    assert entropy.requires_grad
