"""Before/after of the profile-driven fixes of ``scaling.py``'s curves, measured side by side in one process:
the previous code path is switched back on for the "before" workload (by this script only), so both run on the
same model, data and machine state, interleaved.

    python benchmarks/fixes.py --threads 1

1. **KV cache without a copy per token** (``text_envs.lm_stepper.GrowingLayer``): the stepper's cache layers
   write each new column into preallocated room (doubling when full) instead of Hugging Face's
   ``DynamicLayer``, which concatenates the whole cache at every step (O(T) copy per token). Before: the
   previous layer (concatenation, trimming by slicing). Workload: ``TokenPPO.collect_rollouts`` at batch 16 x
   ``--long-tokens`` (512) new tokens, the bench model (``--batch`` must be a multiple of 4: GRPO's groups).
2. **No entropy graph in the critic-free update when ``ent_coef == 0``** (``CriticFreeAlgorithm.train``): the
   entropy is then only logged, so it is computed without autograd (TokenPPO already did). Before: the entropy
   with its graph, hence its vocabulary-sized backward. Workload: ``GRPO.train()`` at batch 16 x 128 tokens.
3. **The update's optimizer step and logits** (``agents.policy.optimizer_options``, ``TransformerPolicy._trunk``):
   AdamW with PyTorch's fused kernel (one kernel over all parameters; PyTorch's CPU default is a Python loop
   over them), and the teacher-forced forward asks the LM head for exactly the columns that predict the
   completion (``logits_to_keep`` as column indices) instead of one more and a slice, whose backward wrote a
   vocabulary-sized zero tensor. Before: a per-parameter AdamW (``foreach=False``, same hyperparameters) and
   the count-plus-slice path. Workload: ``TokenPPO.train()`` (4 epochs) at batch 16 x ``--short-tokens`` (32),
   the size of ``vs_trl.py``.

Writes ``results/fixes.json``; ratios are after / before (tokens per second, wall clock and per CPU-second).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def concatenating_layer_class() -> type:
    """The stepper's previous cache layer: Hugging Face's ``DynamicLayer`` (``torch.cat`` at every update),
    trimmed and padded on the left by slicing and concatenation, as ``BatchedLMStepper`` did before."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class ConcatenatingLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            super().__init__()
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys.clone(), values.clone()

        def trim_left(self, columns: int) -> None:
            self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]

        def pad_left(self, columns: int) -> None:
            pad = (*self.keys.shape[:2], columns)
            self.keys = torch.cat([self.keys.new_zeros((*pad, self.keys.shape[-1])), self.keys], dim=2)
            self.values = torch.cat([self.values.new_zeros((*pad, self.values.shape[-1])), self.values], dim=2)

    return ConcatenatingLayer


def cache_fix(model_path: str, batch: int, new_tokens: int, repeats: int, seed: int) -> dict[str, Any]:
    from benchmarks.scaling import build_agents
    from text_envs import lm_stepper

    agent, callback = build_agents(model_path, batch, new_tokens, False, seed, ("token-ppo",))["token-ppo"]
    growing, concatenating = lm_stepper.GrowingLayer, concatenating_layer_class()

    def collect(layer: type) -> Callable[[], int]:
        def run() -> int:
            lm_stepper.GrowingLayer = layer  # what _growing_cache builds the policy's fresh cache from
            agent.policy.reset_cache()
            before = agent.num_timesteps
            try:
                agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, n_rollout_steps=agent.n_steps)
            finally:
                lm_stepper.GrowingLayer = growing
            return agent.num_timesteps - before
        return run

    results = common.interleaved({"before: concatenating cache (DynamicLayer)": collect(concatenating),
                                  "after: GrowingLayer": collect(growing)}, repeats)
    agent.env.close()
    return results


def train_before_after(agent: Any, labels: tuple[str, str], repeats: int, use_old: Callable[[], None],
                       restore: Callable[[], None]) -> dict[str, Any]:
    """``agent.train()`` on its filled rollout buffer, timed with the old code path (switched on by ``use_old``,
    off again by ``restore``) for "before", interleaved with the current one for "after"."""
    tokens = agent.rollout_buffer.num_tokens * agent.n_epochs

    def train(before: bool) -> Callable[[], int]:
        def run() -> int:
            if before:
                use_old()
            try:
                agent.train()
            finally:
                restore()
            return tokens
        return run

    results = common.interleaved({labels[0]: train(True), labels[1]: train(False)}, repeats)
    agent.env.close()
    return results


def entropy_fix(model_path: str, batch: int, new_tokens: int, repeats: int, seed: int) -> dict[str, Any]:
    from agents.algos.base import SequenceOnPolicyAlgorithm
    from benchmarks.scaling import build_agents

    agent, callback = build_agents(model_path, batch, new_tokens, False, seed, ("grpo",))["grpo"]
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, n_rollout_steps=agent.n_steps)
    original = SequenceOnPolicyAlgorithm.evaluate_batch

    def with_entropy_graph(self, batch_, entropy_grad: bool = True):
        return original(self, batch_, entropy_grad=True)

    def use_old() -> None:
        agent.evaluate_batch = with_entropy_graph.__get__(agent)

    return train_before_after(agent, ("before: entropy with its graph", "after: entropy without graph (ent_coef == 0)"),
                              repeats, use_old, restore=lambda: agent.__dict__.pop("evaluate_batch", None))


def update_fix(model_path: str, batch: int, new_tokens: int, repeats: int, seed: int) -> dict[str, Any]:
    import torch

    from agents import policy as policy_module
    from benchmarks.scaling import build_agents

    agent, callback = build_agents(model_path, batch, new_tokens, False, seed, ("token-ppo",))["token-ppo"]
    agent.n_epochs, agent.batch_size = 4, batch  # vs_trl.py's update: 4 epochs of one minibatch
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, n_rollout_steps=agent.n_steps)
    fused = agent.policy.optimizer
    group = {k: v for k, v in fused.param_groups[0].items() if k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
    per_parameter = torch.optim.AdamW(fused.param_groups[0]["params"], **group, foreach=False)
    index_columns = policy_module.takes_column_indices

    def use_old() -> None:
        agent.policy.optimizer = per_parameter
        policy_module.takes_column_indices = lambda model: False

    def restore() -> None:
        agent.policy.optimizer = fused
        policy_module.takes_column_indices = index_columns

    return train_before_after(agent, ("before: per-parameter AdamW, logits of one more column, sliced",
                                      "after: fused AdamW, logits of the completion's columns"),
                              repeats, use_old, restore)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=128, repeats=5)
    p.add_argument("--long-tokens", type=int, default=512, help="new tokens of the KV-cache workload (default 512)")
    p.add_argument("--short-tokens", type=int, default=32, help="new tokens of the update workload (default 32)")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    bench = str(common.build_bench_model(tempfile.mkdtemp(prefix="bench-gpt2-1024-"), seed=args.seed,
                                         n_positions=max(1024, args.long_tokens + 64)))
    sections = {
        "kv_cache": (f"1. KV cache: TokenPPO.collect_rollouts, batch {args.batch} x {args.long_tokens} new tokens",
                     cache_fix(bench, args.batch, args.long_tokens, args.repeats, args.seed)),
        "critic_free_entropy": (f"2. entropy: GRPO.train(), batch {args.batch} x {args.new_tokens} tokens",
                                entropy_fix(bench, args.batch, args.new_tokens, args.repeats, args.seed)),
        "update": (f"3. update: TokenPPO.train(), 4 epochs, batch {args.batch} x {args.short_tokens} tokens",
                   update_fix(bench, args.batch, args.short_tokens, args.repeats, args.seed)),
    }
    ratios, cpu_ratios = {}, {}
    for key, (title, results) in sections.items():
        before, after = results.values()
        common.print_table(f"{title} ({args.threads} thread(s), median of {args.repeats})", list(results.items()))
        ratios[f"{key}_after_vs_before"] = common.ratio(after, before)
        cpu_ratios[f"{key}_after_vs_before"] = common.cpu_ratio(after, before)
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "long_tokens": args.long_tokens,
                          "short_tokens": args.short_tokens,
                          "repeats": args.repeats},
               "environment": common.environment(args.threads),
               "results": {key: results for key, (_, results) in sections.items()},
               "ratios_cpu_time": cpu_ratios, "ratios": ratios}
    common.write_result("fixes", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
