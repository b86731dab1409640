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


def entropy_fix(model_path: str, batch: int, new_tokens: int, repeats: int, seed: int) -> dict[str, Any]:
    from agents.algos.base import SequenceOnPolicyAlgorithm
    from benchmarks.scaling import build_agents

    agent, callback = build_agents(model_path, batch, new_tokens, False, seed, ("grpo",))["grpo"]
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, n_rollout_steps=agent.n_steps)
    tokens = agent.rollout_buffer.num_tokens * agent.n_epochs
    original = SequenceOnPolicyAlgorithm.evaluate_batch

    def with_entropy_graph(self, batch_, entropy_grad: bool = True):
        return original(self, batch_, entropy_grad=True)

    def train(patched: bool) -> Callable[[], int]:
        def run() -> int:
            if patched:
                agent.evaluate_batch = with_entropy_graph.__get__(agent)
            try:
                agent.train()
            finally:
                agent.__dict__.pop("evaluate_batch", None)
            return tokens
        return run

    results = common.interleaved({"before: entropy with its graph": train(True),
                                  "after: entropy without graph (ent_coef == 0)": train(False)}, repeats)
    agent.env.close()
    return results


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=128, repeats=5)
    p.add_argument("--long-tokens", type=int, default=512, help="new tokens of the KV-cache workload (default 512)")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    bench = str(common.build_bench_model(tempfile.mkdtemp(prefix="bench-gpt2-1024-"), seed=args.seed,
                                         n_positions=max(1024, args.long_tokens + 64)))
    sections = {
        "kv_cache": (f"1. KV cache: TokenPPO.collect_rollouts, batch {args.batch} x {args.long_tokens} new tokens",
                     cache_fix(bench, args.batch, args.long_tokens, args.repeats, args.seed)),
        "critic_free_entropy": (f"2. entropy: GRPO.train(), batch {args.batch} x {args.new_tokens} tokens",
                                entropy_fix(bench, args.batch, args.new_tokens, args.repeats, args.seed)),
    }
    ratios, cpu_ratios = {}, {}
    for key, (title, results) in sections.items():
        before, after = results.values()
        common.print_table(f"{title} ({args.threads} thread(s), median of {args.repeats})", list(results.items()))
        ratios[f"{key}_after_vs_before"] = common.ratio(after, before)
        cpu_ratios[f"{key}_after_vs_before"] = common.cpu_ratio(after, before)
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "long_tokens": args.long_tokens,
                          "repeats": args.repeats},
               "environment": common.environment(args.threads),
               "results": {key: results for key, (_, results) in sections.items()},
               "ratios_cpu_time": cpu_ratios, "ratios": ratios}
    common.write_result("fixes", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
