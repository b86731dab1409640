"""``textgen-rl train`` and ``textgen-rl eval``: the main job and held-out evaluation."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agents.cli import CLIError


def add_common_env_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by train and eval: task, model, reward, budget, device."""
    parser.add_argument("--task", default="sentiment", help="task name (see `textgen-rl tasks`)")
    parser.add_argument("--model", default="tiny", help="model alias, local path or hub id (see `textgen-rl models`)")
    parser.add_argument("--reward-model", default=None,
                        help="reward override: a registered name (see `textgen-rl rewards`) or learned:PATH")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="token budget (default: the task's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: TEXTGEN_RL_THREADS or "
                                                                   "half the cores)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    train = subparsers.add_parser("train", help="fine-tune a language model with RL on a task")
    add_common_env_args(train)
    train.add_argument("--algo", default="token-ppo", help="token-ppo, ppo, a2c, maskable-ppo, reinforce, rloo, grpo")
    train.add_argument("--timesteps", type=int, default=32_768, help="budget in generated tokens")
    train.add_argument("--kl-coef", type=float, default=0.05, help="KL penalty coefficient beta")
    train.add_argument("--kl-target", type=float, default=None, help="adaptive KL target per sequence (token-ppo)")
    train.add_argument("--num-envs", type=int, default=16, help="parallel episodes")
    train.add_argument("--learning-rate", type=float, default=None, help="default: the algorithm's CLI default")
    train.add_argument("--eval-n", type=int, default=64, help="held-out prompts evaluated before and after")
    train.add_argument("--out", default=None, help="run folder (default: runs/<task>-<algo>-<time>)")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("eval", help="score a model on a task's held-out prompts")
    add_common_env_args(evaluate)
    evaluate.add_argument("--n", type=int, default=64, help="number of held-out completions")
    evaluate.add_argument("--reference", default=None,
                          help="reference model of the KL (default: the base recorded in an exported run, else --model)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_eval)


def _reward_args(spec: str | None) -> tuple[str | None, dict[str, Any] | None]:
    if spec is None:
        return None, None
    from text_envs.rewards.learned import parse_reward_spec

    return parse_reward_spec(spec)


def _prepare_out(out: str | None, task: str, algo: str) -> Path:
    path = Path(out) if out else Path("runs") / f"{task}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise CLIError(f"output folder {str(path)!r} is not writable: {error.strerror or error}") from None
    return path


def _validate_train(args: argparse.Namespace) -> None:
    from agents.algorithm_registry import ALGORITHMS
    from text_envs.tasks import get_task

    if args.algo not in ALGORITHMS:
        raise CLIError(f"unknown algorithm {args.algo!r}; known: {', '.join(ALGORITHMS)}")
    for name in ("timesteps", "num_envs", "eval_n"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.kl_coef < 0:
        raise CLIError(f"--kl-coef must be >= 0, got {args.kl_coef}")
    get_task(args.task)


def _print_metrics(title: str, result: Any) -> None:
    print(f"\n{title}: score {result.score_mean:+.4f} (std {result.score_std:.3f}), KL {result.kl_mean:.3f}, "
          f"distinct-1 {result.distinct_1:.3f}, distinct-2 {result.distinct_2:.3f}, length {result.length_mean:.1f}, "
          f"n={result.n}")
    for sample in result.samples:
        print(f"  [{sample['score']:+.3f}] {sample['prompt']!r} -> {sample['text']!r}")


def run_train(args: argparse.Namespace) -> int:
    """Train, evaluate before/after, and write the run folder."""
    from stable_baselines3.common.logger import configure

    from agents.algorithm_registry import make_algorithm
    from agents.algos.base import SequenceOnPolicyAlgorithm
    from agents.callbacks import ObjectiveLogger
    from agents.evaluation import EXPORT_METADATA, evaluate_model
    from agents.plotting import plot_reward_curve
    from text_envs.models import configure_threads

    _validate_train(args)
    out = _prepare_out(args.out, args.task, args.algo)
    configure_threads(args.threads)
    reward_model, reward_kwargs = _reward_args(args.reward_model)
    env_kwargs = {"model": args.model, "task": args.task, "reward_model": reward_model,
                  "reward_kwargs": reward_kwargs, "kl_coef": args.kl_coef, "max_new_tokens": args.max_new_tokens,
                  "device": args.device}
    algo = make_algorithm(args.algo, env_kwargs=env_kwargs, num_envs=args.num_envs, model=args.model,
                          seed=args.seed, device=args.device, learning_rate=args.learning_rate,
                          kl_target=args.kl_target)
    eval_kwargs = {"task": args.task, "n": args.eval_n, "seed": 1234, "env": algo.env.env}
    before = evaluate_model(algo.policy.lm, **eval_kwargs)
    _print_metrics("before training", before)
    algo.set_logger(configure(str(out), ["csv", "tensorboard"]))
    started = time.time()
    # sequence algorithms (TokenPPO...) log objective/* themselves; stock SB3 ones get it from a callback
    callback = None if isinstance(algo, SequenceOnPolicyAlgorithm) else ObjectiveLogger()
    algo.learn(total_timesteps=args.timesteps, progress_bar=True, callback=callback)
    seconds = time.time() - started
    after = evaluate_model(algo.policy.lm, **eval_kwargs)
    _print_metrics("after training", after)
    algo.save(out / "model.zip")
    hf_dir = algo.policy.save_pretrained(out / "hf")
    (hf_dir / EXPORT_METADATA).write_text(json.dumps({"base_model": args.model, "task": args.task,
                                                      "algo": args.algo}, indent=2) + "\n")
    plot_reward_curve(out / "progress.csv", out / "reward_curve.png", f"{args.algo} on {args.task} ({args.model})")
    summary = {"task": args.task, "algo": args.algo, "model": args.model, "timesteps": args.timesteps,
               "seconds": round(seconds, 1), "tokens_per_second": round(args.timesteps / max(seconds, 1e-9), 1),
               "before": before.to_dict(), "after": after.to_dict()}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'metric':<12}{'before':>10}{'after':>10}")
    for key in ("score_mean", "kl_mean", "distinct_1", "distinct_2"):
        print(f"{key:<12}{getattr(before, key):>10.4f}{getattr(after, key):>10.4f}")
    print(f"\ntrained {args.timesteps} tokens in {seconds:.0f} s; run folder: {out} (model.zip, hf/, progress.csv, "
          "TensorBoard events, reward_curve.png, eval.json)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a model (alias, path or exported run) on held-out prompts."""
    from agents.evaluation import evaluate_model
    from text_envs.models import configure_threads

    if args.n < 1:
        raise CLIError(f"--n must be a positive integer, got {args.n}")
    configure_threads(args.threads)
    reward_model, reward_kwargs = _reward_args(args.reward_model)
    result = evaluate_model(args.model, task=args.task, n=args.n, reference_model=args.reference,
                            reward_model=reward_model, reward_kwargs=reward_kwargs,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        _print_metrics(f"{args.model} on {args.task}", result)
    return 0
