"""The core math of token-level RL, as small pure functions on tensors.

Shapes: ``B`` sequences, ``T`` completion tokens (right-padded), ``V`` vocabulary. A ``mask``
``(B, T)`` is 1 on real completion tokens and 0 on padding; padded positions never leak into
results.
"""

from __future__ import annotations

import torch

MASKED_LOGIT = -1e9  # finite, so masked actions give log-prob ~ -1e9 (ratio 0), never NaN


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p (nucleus) filtering. ``(..., V) -> (..., V)``.

    Filtered-out entries are set to :data:`MASKED_LOGIT`, so ``log_softmax`` of the result is the
    log-probability of the distribution actually sampled from.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, MASKED_LOGIT)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)  # (..., V)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the first token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, MASKED_LOGIT)
    return logits


def filter_mask(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Boolean action mask ``(..., V)``: True where ``process_logits`` keeps the token (NLPO-style masks)."""
    return process_logits(logits, 1.0, top_k, top_p) > MASKED_LOGIT / 2


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``logits``: ``(B, T, V), (B, T) -> (B, T)``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits``: ``(..., V) -> (...)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor,
                         entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``gather_logprobs`` and ``entropy_from_logits`` sharing one log-softmax: ``(B, T, V), (B, T) -> (B, T), (B, T)``.

    With ``entropy_grad=False`` the entropy is computed without building its graph (it is then
    only logged), which saves a vocabulary-sized backward pass when the entropy bonus is 0.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1. ``(B, T), (B, T) -> ()``."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to zero mean, unit variance over the masked positions. ``(B, T) -> (B, T)``.

    Padding positions are returned as 0. With ``shift_mean=False`` only the scale changes.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded, *terminated* sequences.

    ``rewards, values, mask: (B, T)``; the value after each sequence's last real token is 0 (the
    episode ended). Returns ``advantages (B, T)`` and ``returns = advantages + values (B, T)``,
    both 0 on padding.
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman 2020). ``(B, T) -> (B, T)``.

    * ``k1 = log r`` with ``log r = logp - logp_ref`` (unbiased, can be negative),
    * ``k2 = (log r)^2 / 2`` (low variance, biased),
    * ``k3 = (r^-1 - 1) + log r`` (unbiased, always >= 0).
    """
    log_ratio = logp - logp_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {kind!r}")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss (to minimise) and the fraction of clipped tokens. Inputs ``(B, T)``."""
    ratio = torch.exp(logp - old_logp)
    unclipped = advantages * ratio
    clipped = advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range_vf: float | None) -> torch.Tensor:
    """Value loss ``0.5 * max((v - R)^2, (v_clipped - R)^2)`` (plain MSE when ``clip_range_vf`` is None). ``(B, T)``."""
    loss = (values - returns) ** 2
    if clip_range_vf is not None:
        clipped = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)
