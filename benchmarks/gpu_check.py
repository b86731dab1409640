"""ONE script for a GPU machine: does the GPU path work, and how close is it to the plain loops?

    python benchmarks/gpu_check.py                 # on a CUDA machine: < 8 minutes on one GPU
    python benchmarks/gpu_check.py --toy           # anywhere (CPU): the same measurements at toy size

For each model (a GPT-2-124M-sized model built from a config, no download, with SmolLM2's 49,152-token
tokenizer; and SmolLM2-135M-Instruct), each algorithm (TokenPPO, GRPO) and each mode (full fine-tuning,
LoRA r=16), in bf16 autocast with fp32 master weights (``device="auto"``):

* rollout tokens/s of the algorithm's ``collect_rollouts`` (policy with its KV cache, the env's
  reference model, the reward) over Hugging Face ``generate`` on the same batch (same prompts and
  number of new tokens, sampling, KV cache; policy only): goal >= 0.8;
* update tokens/s of the algorithm's ``train()`` over a plain forward + backward + AdamW loop on the
  same sequences (same minibatches and epochs): goal >= 0.8;
* peak GPU memory (``torch.cuda.max_memory_allocated``) of the rollout + update;
* bf16 vs fp32 agreement: the mean and max absolute difference of the log-probabilities of the same
  sampled tokens computed under bf16 autocast and in fp32.

It prints one table and writes ``benchmarks/results/gpu_check.json`` (``--out``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

ALGOS = ("token-ppo", "grpo")
MODES = ("full", "lora")


def build_gpt2_124m(folder: Path, toy: bool) -> str:
    """A randomly initialised GPT-2 of 124M parameters (12 x 768; toy: 2 x 64) with SmolLM2's tokenizer (or the
    bundled one when SmolLM2 is not installed), saved with ``save_pretrained``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from text_envs.errors import MissingDependencyError
    from text_envs.models import load_tokenizer

    try:
        tokenizer = load_tokenizer("smollm2-135m")
    except MissingDependencyError:
        tokenizer = load_tokenizer("tiny")
    size = {"n_layer": 2, "n_embd": 64, "n_head": 2} if toy else {"n_layer": 12, "n_embd": 768, "n_head": 12}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **size)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate_rate(lm: Any, tokenizer: Any, batch: int, new_tokens: int) -> float:
    """Tokens/s of Hugging Face ``generate`` (sampling, KV cache) on ``batch`` benchmark prompts."""
    import torch

    prompts = (common.PROMPTS * (batch // len(common.PROMPTS) + 1))[:batch]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(next(lm.parameters()).device)
    _sync()
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(encoded["input_ids"].device.type, torch.bfloat16,
                                         enabled=encoded["input_ids"].is_cuda):
        lm.generate(**encoded, do_sample=True, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    pad_token_id=tokenizer.pad_token_id)
    _sync()
    return batch * new_tokens / (time.perf_counter() - start)


def plain_update_rate(policy: Any, batches: list[Any], epochs: int) -> float:
    """Tokens/s of forward + backward + AdamW over the same minibatches, no RL bookkeeping."""
    import torch

    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    tokens = 0
    _sync()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            with policy._autocast():
                out = policy.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                loss = out.logits[:, -batch.actions.shape[1]:].float().logsumexp(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokens += int(batch.completion_mask.sum())
    _sync()
    return tokens / (time.perf_counter() - start)


def logprob_agreement(policy: Any, batch: Any) -> tuple[float, float]:
    """Mean and max |log pi_bf16 - log pi_fp32| of the batch's sampled tokens."""
    import torch

    from agents.rl_math import logprobs_and_entropy

    with torch.no_grad():
        mask = batch.completion_mask.bool()
        results = []
        for bf16 in (True, False):
            with torch.autocast(batch.input_ids.device.type, torch.bfloat16, enabled=bf16):
                logits = policy.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   use_cache=False).logits[:, -batch.actions.shape[1] - 1:-1].float()
            results.append(logprobs_and_entropy(logits, batch.actions, False)[0][mask])
        difference = (results[0] - results[1]).abs()
    return float(difference.mean()), float(difference.max())


def check(model: str, algo: str, mode: str, batch: int, new_tokens: int) -> dict[str, Any]:
    """One row of the table."""
    import torch

    from agents.algorithm_registry import make_algorithm

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    agent = make_algorithm(algo, env_kwargs={"model": model, "task": common.bench_task(new_tokens),
                                             "reward_model": common.vowel_reward, "kl_coef": 0.05,
                                             "max_new_tokens": new_tokens, "prompt_format": "raw"},
                           num_envs=batch, model=model, device="auto", lora={"r": 16} if mode == "lora" else None,
                           overrides={"n_steps": new_tokens, "batch_size": max(1, batch // 2),
                                      **({"group_size": min(4, batch)} if algo == "grpo" else {})})
    from stable_baselines3.common.logger import configure

    agent.set_logger(configure(None, []))
    _, callback = agent._setup_learn(batch * new_tokens, callback=None)
    _sync()
    start = time.perf_counter()
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, new_tokens)
    _sync()
    rollout_seconds = time.perf_counter() - start
    generated = batch * new_tokens
    buffer = agent.rollout_buffer
    tokens_in_buffer = sum(len(e) for e in buffer.episodes)
    _sync()
    start = time.perf_counter()
    agent.train()
    _sync()
    update_rate = tokens_in_buffer * agent.n_epochs / (time.perf_counter() - start)
    batches = [buffer.collate(list(range(i, min(i + agent.batch_size, len(buffer.episodes)))))
               for i in range(0, len(buffer.episodes), agent.batch_size)]  # the update's sequences (advantages set)
    agreement = logprob_agreement(agent.policy, batches[0])
    plain = plain_update_rate(agent.policy, batches, agent.n_epochs)
    lm = agent.policy.lm
    reference_rate = generate_rate(lm, agent.policy.tokenizer, batch, new_tokens)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else common.peak_rss_bytes()
    agent.env.close()
    return {"model": Path(model).name if Path(model).exists() else model, "algo": algo, "mode": mode,
            "device": str(next(lm.parameters()).device), "rollout_tokens_per_s": generated / rollout_seconds,
            "generate_tokens_per_s": reference_rate, "rollout_vs_generate": generated / rollout_seconds / reference_rate,
            "update_tokens_per_s": update_rate, "plain_update_tokens_per_s": plain,
            "update_vs_plain": update_rate / plain, "peak_memory_bytes": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if torch.cuda.is_available() else "process peak RSS",
            "logprob_abs_diff_bf16_fp32_mean": agreement[0], "logprob_abs_diff_bf16_fp32_max": agreement[1]}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=32, new_tokens=64, repeats=1)
    p.add_argument("--toy", action="store_true", help="toy sizes, for a CPU (the test suite runs this)")
    p.add_argument("--skip-smollm2", action="store_true", help="only the GPT-2-124M-sized model")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    import torch

    if not torch.cuda.is_available() and not args.toy:
        raise SystemExit("no CUDA device: run on a GPU machine, or use --toy for the CPU smoke run")
    batch, new_tokens = (2, 4) if args.toy else (args.batch, args.new_tokens)
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    models = [build_gpt2_124m(folder / "gpt2-124m", args.toy)]
    if not args.toy and not args.skip_smollm2:
        models.append("smollm2-135m")
    started = time.perf_counter()
    rows = [check(model, algo, mode, batch, new_tokens) for model in models for algo in ALGOS for mode in MODES]
    mib = 2**20
    print(f"\nGPU check: batch {batch}, {new_tokens} new tokens, bf16 autocast, fp32 master weights "
          f"({time.perf_counter() - started:.0f} s)")
    print("| model | algo | mode | rollout tok/s | generate tok/s | ratio (>= 0.8) | update tok/s | plain tok/s "
          "| ratio (>= 0.8) | peak MiB | logp |bf16 - fp32| mean / max |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['algo']} | {r['mode']} | {r['rollout_tokens_per_s']:,.0f} | "
              f"{r['generate_tokens_per_s']:,.0f} | {r['rollout_vs_generate']:.2f} | {r['update_tokens_per_s']:,.0f} | "
              f"{r['plain_update_tokens_per_s']:,.0f} | {r['update_vs_plain']:.2f} | {r['peak_memory_bytes'] / mib:,.0f} | "
              f"{r['logprob_abs_diff_bf16_fp32_mean']:.4f} / {r['logprob_abs_diff_bf16_fp32_max']:.3f} |")
    ratios = {f"{r['model']}/{r['algo']}/{r['mode']}/{kind}": round(r[kind], 3) for r in rows
              for kind in ("rollout_vs_generate", "update_vs_plain")}
    payload = {"config": {"batch": batch, "new_tokens": new_tokens, "toy": args.toy},
               "environment": {**common.environment(args.threads),
                               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "rows": rows, "ratios": ratios}
    common.write_result("gpu_check" + ("_toy" if args.toy else ""), args.out, payload)
    return payload


if __name__ == "__main__":
    main()
