"""Soak test: step the batched TextGen vector env for a long time and watch the process's resident memory.

    python benchmarks/soak.py --minutes 60 --num-envs 16 [--json benchmarks/results/soak.json]

Random actions (uniform over the vocabulary, so episodes end mostly at the token budget, with
occasional EOS), dense KL penalty (the reference model's KV cache is stepped, trimmed and re-prefilled
all the time), autoresets, and now and then a rejected call (bad action, bad option, a reward model
failure), which must not leak either. RSS is sampled every ``--sample-seconds``; the growth is
measured from the end of the warm-up (the first 10 % of the run: allocator pools filling) to the end.
Goal: < 5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class FlakyReward:
    """Word count, failing (NaN) on every 50th call: exercises the rolled-back step."""

    name = "flaky-length"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        self.calls += 1
        if self.calls % 50 == 0:
            return [float("nan")] * len(completions)
        return [float(len(c.split())) for c in completions]


def soak(minutes: float, num_envs: int, model: str, sample_seconds: float, seed: int = 0) -> dict:
    import torch

    from text_envs.errors import TextEnvsError
    from text_envs.models import configure_threads
    from text_envs.vector_env import TextGenVectorEnv

    configure_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = TextGenVectorEnv(num_envs=num_envs, model=model, task="sentiment", reward_model=FlakyReward(),
                           kl_coef=0.05, device="cpu")
    vocab = env.single_action_space.n
    env.reset(seed=seed)
    started = time.monotonic()
    deadline = started + minutes * 60
    samples: list[tuple[float, int]] = [(0.0, rss_bytes())]
    steps = rejected = 0
    next_sample = started + sample_seconds
    while time.monotonic() < deadline:
        try:
            if steps % 997 == 0:
                env.reset(options={"split": "nope"})  # rejected: must leave no trace
            env.step(rng.integers(0, vocab, size=num_envs))
        except TextEnvsError:
            rejected += 1
        steps += 1
        if steps % 5000 == 0:
            env.reset(seed=int(rng.integers(0, 2**31)))
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now - started, rss_bytes()))
            next_sample += sample_seconds
    samples.append((time.monotonic() - started, rss_bytes()))
    env.close()
    warm = next((rss for t, rss in samples if t >= 0.1 * minutes * 60), samples[-1][1])
    final = samples[-1][1]
    return {"minutes": minutes, "num_envs": num_envs, "model": model, "steps": steps,
            "tokens": steps * num_envs, "rejected_calls": rejected, "rss_start_mb": samples[0][1] / 2**20,
            "rss_after_warmup_mb": warm / 2**20, "rss_end_mb": final / 2**20,
            "rss_max_mb": max(r for _, r in samples) / 2**20, "growth_after_warmup": final / warm - 1,
            "samples": [(round(t, 1), round(r / 2**20, 2)) for t, r in samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None, help="write the result (with the RSS samples) here")
    args = parser.parse_args(argv)
    result = soak(args.minutes, args.num_envs, args.model, args.sample_seconds)
    print(f"{result['steps']:,} vector steps ({result['tokens']:,} tokens, {result['rejected_calls']} rejected calls) "
          f"in {args.minutes:g} min; RSS {result['rss_start_mb']:.0f} MB at start, "
          f"{result['rss_after_warmup_mb']:.1f} MB after warm-up, {result['rss_end_mb']:.1f} MB at the end "
          f"(max {result['rss_max_mb']:.1f}): growth after warm-up {result['growth_after_warmup']:+.2%} (goal < 5 %)")
    if args.json is not None:
        from text_envs.atomic import write_json_atomic

        write_json_atomic(args.json, result)
    return 0 if result["growth_after_warmup"] < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
