"""Training speed of a real model (SmolLM2-135M) on this CPU against the ceiling its FLOPs allow.

    python benchmarks/flops.py --threads 2 --model smollm2-135m --batch 8 --new-tokens 32

In one run: (1) the CPU's matmul throughput, measured with large fp32 ``torch.mm`` on the same threads;
(2) full fine-tuning and LoRA r=16 RLOO (a rollout, then an update) on the model, timed. The ceiling of
a phase is the machine's matmul FLOP/s over that phase's FLOPs per generated token, counted with the
standard estimates (Kaplan et al. 2020): a forward costs ``2 N`` FLOPs per token for ``N`` parameters
(the embedding's lookup excluded, the LM head included), a forward + backward ``6 N``; a rollout token
costs two forwards (policy and reference: ``4 N``), an update token one forward + backward per epoch
(``6 N``; LoRA: the backward through the frozen weights costs ``2 N`` for the activations' gradients
and nothing for theirs, so ``4 N``). The fraction printed is measured tokens/s over the ceiling.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def matmul_flops(seconds: float = 3.0, size: int = 2048) -> float:
    """Sustained fp32 FLOP/s of ``torch.mm`` on ``size x size`` matrices (median of 1-second windows)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 1.0:
            torch.mm(a, b)
            count += 1
        rates.append(2 * size**3 * count / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def matmul_parameters(model_name: str) -> int:
    """Parameters that take part in matmuls: all but the input embedding (its lookup is free); a tied LM head counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from text_envs.models import load_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(model_name))
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding + head


def measure(model_name: str, lora: bool, batch: int, new_tokens: int) -> dict:
    """Seconds of one rollout and one update of RLOO, and the tokens they processed."""
    from stable_baselines3.common.logger import configure

    from agents.algorithm_registry import make_algorithm

    agent = make_algorithm("rloo", env_kwargs={"model": model_name, "task": common.bench_task(new_tokens),
                                               "reward_model": common.vowel_reward, "kl_coef": 0.05,
                                               "max_new_tokens": new_tokens, "prompt_format": "raw"},
                           num_envs=batch, model=model_name, device="cpu", lora={"r": 16} if lora else None,
                           overrides={"n_steps": new_tokens, "batch_size": batch, "group_size": 4})
    agent.set_logger(configure(None, []))
    _, callback = agent._setup_learn(batch * new_tokens, callback=None)
    start = time.perf_counter()
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, new_tokens)
    rollout_seconds = time.perf_counter() - start
    rollout_tokens = int(agent.num_timesteps)
    trained = sum(len(e) for e in agent.rollout_buffer.episodes)
    start = time.perf_counter()
    agent.train()
    update_seconds = time.perf_counter() - start
    agent.env.close()
    return {"rollout_tokens": rollout_tokens, "rollout_seconds": rollout_seconds, "update_tokens": trained,
            "update_seconds": update_seconds, "epochs": agent.n_epochs}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=8, new_tokens=32, repeats=1)
    p.set_defaults(model="smollm2-135m")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    flops = matmul_flops()
    n = matmul_parameters(args.model)
    rows = {}
    for mode in ("full", "lora"):
        m = measure(args.model, mode == "lora", args.batch, args.new_tokens)
        rollout_rate = m["rollout_tokens"] / m["rollout_seconds"]
        update_rate = m["update_tokens"] * m["epochs"] / m["update_seconds"]  # token-epochs per second
        train_flops_per_token = (6 if mode == "full" else 4) * n
        rows[mode] = {**m, "rollout_tokens_per_s": rollout_rate, "update_token_epochs_per_s": update_rate,
                      "rollout_ceiling": flops / (2 * 2 * n), "update_ceiling": flops / train_flops_per_token,
                      "end_to_end_tokens_per_s": m["rollout_tokens"] / (m["rollout_seconds"] + m["update_seconds"])}
        rows[mode]["rollout_fraction"] = rollout_rate / rows[mode]["rollout_ceiling"]
        rows[mode]["update_fraction"] = update_rate / rows[mode]["update_ceiling"]
    print(f"\n{args.model}: {n / 1e6:.1f}M matmul parameters; this CPU: {flops / 1e9:.1f} GFLOP/s fp32 matmul "
          f"on {args.threads} thread(s); RLOO, batch {args.batch} x {args.new_tokens} new tokens")
    print("| mode | rollout tok/s | ceiling | fraction | update tok x epoch/s | ceiling | fraction | end to end tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['rollout_tokens_per_s']:.1f} | {r['rollout_ceiling']:.1f} | {r['rollout_fraction']:.2f} | "
              f"{r['update_token_epochs_per_s']:.1f} | {r['update_ceiling']:.1f} | {r['update_fraction']:.2f} | "
              f"{r['end_to_end_tokens_per_s']:.1f} |")
    payload = {"config": {"model": args.model, "batch": args.batch, "new_tokens": args.new_tokens},
               "environment": common.environment(args.threads), "matmul_flops": flops, "matmul_parameters": n,
               "results": rows,
               "ratios": {f"{mode}_{kind}_fraction": round(rows[mode][f"{kind}_fraction"], 3)
                          for mode in rows for kind in ("rollout", "update")}}
    common.write_result("flops", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
