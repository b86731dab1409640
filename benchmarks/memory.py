"""Peak memory of a TokenPPO training step (one rollout + one update) against the model's parameter bytes,
and the number of language-model copies held, for full fine-tuning and for LoRA (``--lora-r``, default 16:
the env's reference is the policy's base with its adapters disabled, so one copy of the weights).

Each repeat runs in a fresh subprocess (peak RSS only grows within a process): after importing everything
it records the baseline RSS, then builds the env (reference model) and TokenPPO (policy with its value head),
runs ``learn()`` for one rollout + update, and records the peak RSS (``ru_maxrss``). It then counts the
distinct Hugging Face models alive (by parameter storage) and the bytes of parameters, gradients and
optimizer state. ``peak_over_param_bytes = (peak RSS - baseline RSS) / parameter bytes of one LM``.

With the default tiny model (~1 M parameters, 4 MB) activations dominate: the logits of a minibatch,
``(sequences x tokens x 4096)`` floats, are several times the weights. ``--also-wide`` repeats the measure
with a wider model (4 layers x 512) where the weights dominate.

    python benchmarks/memory.py --threads 1 --batch 16 --new-tokens 64 --repeats 3 --also-wide [--lora-r 16]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

HERE = Path(__file__).resolve().parent


def current_rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    common.pin_threads(args.threads)
    import gc
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers import PreTrainedModel

    from agents import TokenPPO, TransformerPolicy, make_text_vec_env

    gc.collect()
    baseline = current_rss_bytes()
    lora = {"r": args.lora_r} if args.lora_r else None
    env = make_text_vec_env(args.batch, env_kwargs={
        "model": args.model, "task": common.bench_task(args.new_tokens), "reward_model": common.vowel_reward,
        "kl_coef": 0.05, "max_new_tokens": args.new_tokens, **({"reference_model": "<policy>"} if lora else {})})
    model = TokenPPO(TransformerPolicy, env, n_steps=args.new_tokens, batch_size=args.minibatch, n_epochs=4,
                     policy_kwargs={"model": args.model, "lora": lora}, seed=args.seed, device="cpu")
    after_build = current_rss_bytes()
    model.learn(args.batch * args.new_tokens)  # one rollout + one update
    peak = common.peak_rss_bytes()

    def nbytes(tensors) -> int:
        seen, total = set(), 0
        for t in tensors:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
        return total

    models = [obj for obj in gc.get_objects() if isinstance(obj, PreTrainedModel)]
    copies = {}
    for m in models:  # distinct copies of weights (sub-modules share their parent's storages)
        key = next(m.parameters()).untyped_storage().data_ptr()
        size = nbytes(m.parameters())
        if key not in copies or size > copies[key][1]:
            copies[key] = (type(m).__name__, size)
    holders = {}
    policy = model.policy
    base = policy.lm.get_base_model() if lora else policy.lm
    holders[id(base)] = ("policy LM with LoRA adapters, and with them disabled the env's reference" if lora
                         else "policy LM (policy + shared value trunk)")
    if policy.value_model is not None:
        holders[id(policy.value_model)] = "separate value trunk"
    reference = env.env.batch.stepper.model if env.env.batch.stepper is not None and not lora else None
    if reference is not None:
        holders[id(reference)] = "env reference LM (KL term)"
    named = []
    for key, (name, size) in copies.items():
        owner = next((holders[id(m)] for m in models if id(m) in holders
                      and next(m.parameters()).untyped_storage().data_ptr() == key), "other")
        named.append({"class": name, "bytes": size, "role": owner})
    param_bytes = nbytes(policy.lm.parameters())
    trainable_bytes = nbytes(p for p in policy.parameters() if p.requires_grad)
    grads = nbytes(p.grad for p in policy.parameters() if p.grad is not None)
    optimizer_state = nbytes(v for state in policy.optimizer.state.values() for v in state.values()
                             if torch.is_tensor(v) and v.dim() > 0)
    return {"baseline_rss": baseline, "after_build_rss": after_build, "peak_rss": peak,
            "param_bytes": param_bytes, "grad_bytes": grads, "optimizer_state_bytes": optimizer_state,
            "lm_copies": len(copies), "copies": named, "trainable_bytes": trainable_bytes,
            "n_params": sum(p.numel() for p in policy.lm.parameters())}


def measure(args, model_path: str, lora_r: int = 0) -> dict:
    runs = []
    for _ in range(args.repeats):
        proc = subprocess.run([sys.executable, str(HERE / "memory.py"), "--child", "--model", model_path,
                               "--batch", str(args.batch), "--new-tokens", str(args.new_tokens),
                               "--minibatch", str(args.minibatch), "--threads", str(args.threads),
                               "--seed", str(args.seed), "--lora-r", str(lora_r)],
                              capture_output=True, text=True, cwd=str(HERE.parent))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        runs.append(json.loads(lines[-1][len("RESULT "):]))
    deltas = [r["peak_rss"] - r["baseline_rss"] for r in runs]
    first = runs[0]
    return {"model": common.describe_model(model_path), "n_params": first["n_params"],
            "param_bytes": first["param_bytes"], "grad_bytes": first["grad_bytes"],
            "optimizer_state_bytes": first["optimizer_state_bytes"], "lm_copies": first["lm_copies"],
            "trainable_bytes": first["trainable_bytes"], "lora_r": lora_r,
            "copies": first["copies"], "peak_rss_delta": common.summarize(deltas),
            "baseline_rss": common.summarize([r["baseline_rss"] for r in runs]),
            "peak_over_param_bytes": round(common.summarize(deltas)["median"] / first["param_bytes"], 2)}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=64, repeats=3)
    p.add_argument("--minibatch", type=int, default=4, help="sequences per minibatch (default 4)")
    p.add_argument("--also-wide", action="store_true", help="also measure a wider model (4 layers x 512)")
    p.add_argument("--lora-r", type=int, default=16, help="rank of the LoRA run measured beside full fine-tuning "
                                                         "(0: full fine-tuning only)")
    p.add_argument("--child", action="store_true", help=__import__("argparse").SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return {}
    model_path = common.resolve_model(args.model, args.seed)
    measured = {"default": measure(args, model_path)}
    if args.lora_r:
        measured["default-lora"] = measure(args, model_path, args.lora_r)
    if args.also_wide:
        import tempfile

        wide = common.build_bench_model(tempfile.mkdtemp(prefix="bench-wide-"), seed=args.seed, n_layer=4,
                                        n_embd=512, n_head=8)
        measured["wide"] = measure(args, str(wide))
    mib = 2**20
    print(f"\nMemory of one TokenPPO step (rollout + update), batch {args.batch}, {args.new_tokens} new tokens, "
          f"minibatch {args.minibatch}, median of {args.repeats} fresh processes")
    print("| model | params | param MiB | trainable MiB | grads MiB | AdamW state MiB | LM copies "
          "| peak RSS - baseline MiB | peak / param bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in measured.items():
        desc = f"{name}: {m['model']['n_layer']}x{m['model']['n_embd']}, vocab {m['model']['vocab_size']}"
        print(f"| {desc} | {m['n_params']:,} | {m['param_bytes'] / mib:.1f} | {m['trainable_bytes'] / mib:.2f} | "
              f"{m['grad_bytes'] / mib:.1f} | "
              f"{m['optimizer_state_bytes'] / mib:.1f} | {m['lm_copies']} | "
              f"{m['peak_rss_delta']['median'] / mib:.1f} | {m['peak_over_param_bytes']} |")
    for name, m in measured.items():
        print(f"{name}: LM copies held: " + ", ".join(f"{c['role']} ({c['class']}, {c['bytes'] / mib:.1f} MiB)"
                                                      for c in m["copies"]))
    ratios = {"peak_over_param_bytes": measured["default"]["peak_over_param_bytes"]}
    if "default-lora" in measured:
        lora = measured["default-lora"]
        ratios["lm_copies_lora"] = lora["lm_copies"]
        ratios["peak_lora_over_full"] = round(lora["peak_rss_delta"]["median"]
                                              / measured["default"]["peak_rss_delta"]["median"], 3)
    if "wide" in measured:
        ratios["peak_over_param_bytes_wide"] = measured["wide"]["peak_over_param_bytes"]
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "minibatch": args.minibatch,
                          "repeats": args.repeats, "epochs": 4},
               "environment": common.environment(args.threads), "results": measured,
               "lm_copies": measured["default"]["lm_copies"],
               "target": "LM copies: policy (+ shared value trunk) and reference, i.e. 2; with LoRA 1 (shared base)",
               "ratios": ratios}
    common.write_result("memory", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
