"""End-to-end training throughput (generated tokens/s, rollouts + updates) and peak RSS: our algorithms
versus Hugging Face TRL on the same locally built model, prompts, programmatic reward, batch, number of
generated tokens, KL coefficient, epochs and threads.

* TokenPPO vs TRL ``PPOTrainer`` (``trl==1.12.0``, the last release with PPO, ``trl.experimental.ppo``),
  4 PPO epochs, one minibatch per epoch;
* GRPO / RLOO (``agents.GRPO`` / ``agents.RLOO``) vs TRL ``GRPOTrainer`` / ``RLOOTrainer`` (latest TRL),
  groups of ``--group-size`` completions per prompt, one optimisation pass per batch (``num_iterations=1``).

KL penalty of our env (``--ppo-kl-penalty``, ``--critic-free-kl-penalty``): TokenPPO uses ``deferred`` (what
``make_algorithm("token-ppo")`` uses): the env computes every token's ``log pi_ref`` with one batched
teacher-forced reference forward per finished batch, and the rollout buffer puts each token's KL term back on
that token, so its GAE advantages are exactly the dense mode's (and, like TRL PPO's per-token KL rewards, see
the penalty at each token), as TRL's PPO computes the reference log-probs once after generation. GRPO/RLOO
use ``sparse``: they only use each sequence's *return*, which is the same sum either way, so the objective is
identical. Extra lines (in the default ``--algos``), compared with the same TRL PPO run, no target:
``ppo_dense`` (TokenPPO with ``kl_penalty="dense"``: the reference stepped with its KV cache every token, the
previous default; key ``tokenppo_dense_vs_trl_ppo``) and ``ppo_sparse`` (``kl_penalty="sparse"``: the whole
KL term credited to the last token, which changes PPO's credit assignment; key ``tokenppo_sparse_vs_trl_ppo``).

Each side runs in its own subprocess (TRL with the interpreter of its own virtual environment, see
``benchmarks/README.md``): one untimed warm-up run of one update, then ``--repeats`` timed runs of
``--updates`` updates, each from a freshly built trainer. Peak RSS is that of the whole subprocess. With
``--rounds N`` this is done N times, our side and TRL's alternating in fresh subprocesses, and the statistics
pool the samples of all rounds: a process's speed depends on the machine's state in that minute (TokenPPO's
median moved by 13 % between two 7-repeat runs 13 minutes apart on an idle machine, 1,559 and 1,359 tokens/s),
which one process per side cannot average out.

    python benchmarks/vs_trl.py --threads 1 --batch 16 --new-tokens 32 --repeats 3 --rounds 3 \\
        --trl-python /tmp/trl-ppo-venv/bin/python --trl-latest-python /tmp/trl-latest-venv/bin/python
    python benchmarks/vs_trl.py --skip-trl      # our side only (no TRL installed)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_TRL_PYTHON = "/tmp/trl-ppo-venv/bin/python"
DEFAULT_TRL_LATEST_PYTHON = "/tmp/trl-latest-venv/bin/python"
PAIRS = {"ppo": ("TokenPPO", "TRL PPOTrainer"), "grpo": ("agents.GRPO", "TRL GRPOTrainer"),
         "rloo": ("agents.RLOO", "TRL RLOOTrainer"),
         "ppo_dense": ("TokenPPO, kl_penalty=dense", "TRL PPOTrainer"),
         "ppo_sparse": ("TokenPPO, kl_penalty=sparse", "TRL PPOTrainer")}
RATIO_KEYS = {"ppo": "tokenppo_vs_trl_ppo", "grpo": "grpo_vs_trl_grpo", "rloo": "rloo_vs_trl_rloo",
              "ppo_dense": "tokenppo_dense_vs_trl_ppo", "ppo_sparse": "tokenppo_sparse_vs_trl_ppo"}
#: our algorithm (child) and TRL trainer behind each ``--algos`` entry
CHILD = {"ppo": "ppo", "grpo": "grpo", "rloo": "rloo", "ppo_dense": "ppo", "ppo_sparse": "ppo"}
TRL_OF = {"ppo": "ppo", "grpo": "grpo", "rloo": "rloo", "ppo_dense": "ppo", "ppo_sparse": "ppo"}
#: the env's kl_penalty of the extra TokenPPO lines (``ppo`` itself runs with ``--ppo-kl-penalty``)
FIXED_PENALTY = {"ppo_dense": "dense", "ppo_sparse": "sparse"}
PENALTIES = ("dense", "sparse", "deferred")
DEFAULT_ALGOS = "ppo,ppo_dense,ppo_sparse,grpo,rloo"


def our_side(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: our algorithm, timed like the TRL runner."""
    common.pin_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    import agents
    from agents import TransformerPolicy, make_text_vec_env

    if args.child != "ppo" and not hasattr(agents, "GRPO" if args.child == "grpo" else "RLOO"):
        return {"side": "ours", "algo": args.child, "missing": True}

    def build() -> Any:
        env = make_text_vec_env(args.batch, env_kwargs={
            "model": args.model, "task": common.bench_task(args.new_tokens), "reward_model": common.vowel_reward,
            "kl_coef": args.kl_coef, "kl_penalty": args.kl_penalty, "max_new_tokens": args.new_tokens})
        common_kwargs = dict(n_steps=args.new_tokens, batch_size=args.batch, learning_rate=5e-5,
                             policy_kwargs={"model": args.model}, seed=args.seed, device="cpu")
        if args.child == "ppo":
            return agents.TokenPPO(TransformerPolicy, env, n_epochs=args.epochs, **common_kwargs)
        cls = agents.GRPO if args.child == "grpo" else agents.RLOO
        return cls(TransformerPolicy, env, n_epochs=args.critic_free_epochs, group_size=args.group_size,
                   **common_kwargs)

    build().learn(args.batch * args.new_tokens)  # warm-up (not timed)
    rates, cpu_rates = [], []
    for _ in range(args.repeats):
        model = build()
        start, cpu_start = time.perf_counter(), time.process_time()
        model.learn(args.updates * args.batch * args.new_tokens)
        rates.append(model.num_timesteps / (time.perf_counter() - start))
        cpu_rates.append(model.num_timesteps / (time.process_time() - cpu_start))
        model.env.close()
        del model
    return {"side": "ours", "algo": args.child, "kl_penalty": args.kl_penalty, "tokens_per_s": rates,
            "cpu_tokens_per_s": cpu_rates, "peak_rss_bytes": common.peak_rss_bytes()}


def run_child(command: list[str], label: str) -> dict[str, Any] | None:
    """Run one side in a subprocess; its ``RESULT {json}`` line, or None (reported on stderr) if it failed."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(HERE.parent))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  {label}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {label}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return result


def run_round(args: argparse.Namespace, algos: list[str], shared: list[str], notes: list[str]) -> dict[str, dict]:
    """One round: for each algorithm our side, then TRL's, each in a fresh subprocess; their results by
    ``"algo/ours"`` / ``"algo/trl"`` (notes about what was left out are appended to ``notes`` once)."""
    results: dict[str, dict] = {}

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)

    for algo in algos:
        ours_label, trl_label = PAIRS[algo]
        child = CHILD[algo]
        penalty = args.critic_free_kl_penalty if child != "ppo" else FIXED_PENALTY.get(algo, args.ppo_kl_penalty)
        ours = run_child([sys.executable, str(HERE / "vs_trl.py"), "--child", child, *shared,
                          "--epochs", str(args.epochs), "--critic-free-epochs", str(args.critic_free_epochs),
                          "--group-size", str(args.group_size), "--kl-penalty", penalty], ours_label)
        if ours and ours.get("missing"):
            note(f"{algo}: agents.{algo.upper()} does not exist; left out")
            continue
        if ours:
            results[f"{algo}/ours"] = ours
        if args.skip_trl:
            continue
        if TRL_OF[algo] != algo:  # extra line: compared with the TRL run of its counterpart
            if TRL_OF[algo] not in algos:
                note(f"{algo}: compared with TRL's {TRL_OF[algo]} run, which --algos leaves out")
            continue
        python = args.trl_python if algo == "ppo" else args.trl_latest_python
        if algo != "ppo" and not Path(python).exists():
            python = args.trl_python
        if not Path(python).exists():
            note(f"{algo}: no TRL interpreter at {python}; TRL side skipped")
            continue
        epochs = args.epochs if algo == "ppo" else args.critic_free_epochs
        trl = run_child([python, str(HERE / "_trl_runner.py"), "--algo", algo, *shared, "--epochs", str(epochs),
                         "--group-size", str(args.group_size)], trl_label)
        if trl:
            results[f"{algo}/trl"] = trl
        else:
            note(f"{algo}: the TRL run failed (see stderr)")
    return results


def merge_result(results: dict[str, dict], key: str, result: dict[str, Any]) -> None:
    """Add one child's result to ``results[key]``: the samples of every round together, the largest peak RSS."""
    if key not in results:
        results[key] = dict(result)
        return
    merged = results[key]
    merged["tokens_per_s"] = merged["tokens_per_s"] + result["tokens_per_s"]
    merged["cpu_tokens_per_s"] = merged["cpu_tokens_per_s"] + result["cpu_tokens_per_s"]
    merged["peak_rss_bytes"] = max(merged["peak_rss_bytes"], result["peak_rss_bytes"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison (or, with the hidden ``--child``, one side of it); returns the written payload."""
    p = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=32, repeats=3)
    p.add_argument("--updates", type=int, default=4, help="rollout+update iterations per timed run (default 4)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of fresh subprocesses, the sides alternating, each running --repeats timed runs; "
                        "the statistics pool every round's samples (default 1)")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs (both sides; default 4)")
    p.add_argument("--critic-free-epochs", type=int, default=1,
                   help="passes per batch for GRPO/RLOO (TRL num_iterations; default 1)")
    p.add_argument("--group-size", type=int, default=4, help="GRPO/RLOO completions per prompt (default 4)")
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--ppo-kl-penalty", choices=PENALTIES, default="deferred",
                   help="our env's kl_penalty for TokenPPO (default deferred: one batched reference forward per "
                        "finished batch, the KL term put back on each token, like TRL PPO's per-token KL)")
    p.add_argument("--critic-free-kl-penalty", choices=PENALTIES, default="sparse",
                   help="our env's kl_penalty for GRPO/RLOO (default sparse: same sequence return, one batched "
                        "reference forward per finished batch, like TRL)")
    p.add_argument("--algos", default=DEFAULT_ALGOS,
                   help=f"comma-separated subset of {DEFAULT_ALGOS} (ppo_dense / ppo_sparse: TokenPPO with "
                        "kl_penalty=dense / sparse, extra lines compared with the same TRL PPO run)")
    p.add_argument("--kl-penalty", choices=PENALTIES, default="deferred", help=argparse_hidden())
    p.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help="python of the venv with trl==1.12.0 (PPO)")
    p.add_argument("--trl-latest-python", default=DEFAULT_TRL_LATEST_PYTHON,
                   help="python of the venv with the latest trl (GRPO, RLOO); defaults to --trl-python's if missing")
    p.add_argument("--skip-trl", action="store_true", help="run our side only")
    p.add_argument("--child", choices=("ppo", "grpo", "rloo"), help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child:
        args.model = common.resolve_model(args.model, args.seed)
        print("RESULT " + json.dumps(our_side(args)), flush=True)
        return {}
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    if args.rounds < 1:  # checked before the benchmark model is built
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    unknown = [a for a in algos if a not in PAIRS]
    if unknown:
        p.error(f"--algos: unknown {unknown}; choose from {sorted(PAIRS)}")
    model_path = common.resolve_model(args.model, args.seed)  # the children pin their own threads
    shared = ["--model", model_path, "--batch", str(args.batch), "--new-tokens", str(args.new_tokens),
              "--updates", str(args.updates), "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--kl-coef", str(args.kl_coef), "--seed", str(args.seed)]
    results: dict[str, dict] = {}
    notes: list[str] = []
    for _ in range(args.rounds):  # fresh processes every round, the two sides alternating
        for key, result in run_round(args, algos, shared, notes).items():
            merge_result(results, key, result)
    rows, summary, ratios, cpu_ratios = [], {}, {}, {}
    for key, result in results.items():
        algo, side = key.split("/")
        stats = common.summarize(result["tokens_per_s"])
        stats["cpu_time"] = common.summarize(result["cpu_tokens_per_s"])
        stats["peak_rss_mib"] = round(result["peak_rss_bytes"] / 2**20, 1)
        stats["implementation"] = result["side"]
        if "kl_penalty" in result:
            stats["kl_penalty"] = result["kl_penalty"]
        summary[key] = stats
        label = PAIRS[algo][0] if side == "ours" else f"{PAIRS[algo][1]} ({result['side']})"
        rows.append((label, stats))
    for algo in algos:
        if any(f"{algo}:" in note and "does not exist" in note for note in notes):
            continue
        trl_key = f"{TRL_OF[algo]}/trl"
        if f"{algo}/ours" in summary and trl_key in summary:
            ratios[RATIO_KEYS[algo]] = common.ratio(summary[f"{algo}/ours"], summary[trl_key])
            cpu_ratios[RATIO_KEYS[algo]] = common.cpu_ratio(summary[f"{algo}/ours"], summary[trl_key])
        elif f"{algo}/ours" in summary:
            ratios[RATIO_KEYS[algo]] = None
    title = (f"End to end: generated tokens/s, batch {args.batch}, {args.new_tokens} new tokens, {args.updates} "
             f"updates per run, kl_coef {args.kl_coef} (ours: TokenPPO {args.ppo_kl_penalty}, GRPO/RLOO "
             f"{args.critic_free_kl_penalty} penalty), {args.threads} thread(s), median of {args.rounds} round(s) x "
             f"{args.repeats}")
    common.print_table(title, rows)
    print("\n| what | peak RSS (MiB) |\n|---|---:|")
    for label, stats in rows:
        print(f"| {label} | {stats['peak_rss_mib']:,.0f} |")
    for note in notes:
        print("note:", note)
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "updates": args.updates,
                          "repeats": args.repeats, "rounds": args.rounds, "ppo_epochs": args.epochs,
                          "critic_free_epochs": args.critic_free_epochs, "group_size": args.group_size,
                          "kl_coef": args.kl_coef, "ppo_kl_penalty": args.ppo_kl_penalty,
                          "critic_free_kl_penalty": args.critic_free_kl_penalty,
                          "reward": "vowel_reward", "skip_trl": args.skip_trl,
                          "model": common.describe_model(model_path)},
               "environment": common.environment(args.threads), "results": summary, "notes": notes,
               "targets": {"tokenppo_vs_trl_ppo": 3.0, "grpo_vs_trl_grpo": 1.5, "rloo_vs_trl_rloo": 1.5},
               "extra_keys_without_target": ["tokenppo_dense_vs_trl_ppo", "tokenppo_sparse_vs_trl_ppo"],
               "ratios_cpu_time": cpu_ratios, "ratios": ratios}
    common.write_result("vs_trl", args.out, payload)
    return payload


def argparse_hidden() -> str:
    """The help text that hides an internal option."""
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
