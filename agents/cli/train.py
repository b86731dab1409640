"""``textgen-rl train`` and ``textgen-rl eval``: the main job and held-out evaluation.

Both check every argument before loading anything (bad input: one line on stderr, exit code 2, no
folder created), and both score the same held-out prompts with the same sampling seed by default
(``--eval-seed`` / ``--seed`` 1234), so ``textgen-rl eval --model runs/NAME/hf`` reproduces the
"after" figures that ``train`` printed.

``torchrun --nproc_per_node=N -m agents.cli train ...`` trains data-parallel (see ``docs/distributed.md``):
every rank checks the arguments, rank 0 alone prints and writes the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.cli import CLIError
from agents.cli.arguments import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from text_envs.errors import TextEnvsError
from text_envs.tasks import DEFAULT_EVAL_SEED as EVAL_SEED


def add_common_env_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by train and eval: task, model, reward, budget, device."""
    parser.add_argument("--task", default="sentiment", help="task name (see `textgen-rl tasks`)")
    parser.add_argument("--model", default="tiny", help="model alias, local path or hub id (see `textgen-rl models`)")
    parser.add_argument("--reward-model", default=None,
                        help="reward override: a registered name (see `textgen-rl rewards`) or learned:PATH "
                             "(default: the task's reward)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="token budget of an episode (default: the task's)")
    parser.add_argument("--env", default="TextGen-v0", choices=("TextGen-v0", "TextChat-v0"),
                        help="TextGen-v0 (one completion per prompt) or the multi-turn TextChat-v0 (--task names a "
                             "responder: guess-number, calculator or textarena:<GameId>; --max-new-tokens is the "
                             "episode's budget of agent and responder tokens)")
    parser.add_argument("--max-turns", type=positive_int, default=None,
                        help="TextChat-v0: agent turns per episode (default 4)")
    parser.add_argument("--max-turn-tokens", type=positive_int, default=None,
                        help="TextChat-v0: tokens per agent turn (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: TEXTGEN_RL_THREADS, else half the cores)")



def _size_rate(limit: float, full: float | None, lora: float) -> str:
    """One row of the model-aware learning rates, for ``--help``."""
    size = "larger" if limit == float("inf") else f"up to {limit / 1e6:g}M parameters"
    return f"{size} {'the algorithm' + chr(39) + 's' if full is None else f'{full:g}'} / {lora:g}"

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    from agents.algorithm_registry import ALGORITHMS, LEARNING_RATES

    rates = ", ".join(f"{name} {spec.defaults['learning_rate']:g}" for name, spec in ALGORITHMS.items())
    sizes = ", ".join(_size_rate(limit, full, lora) for limit, full, lora in LEARNING_RATES)
    train = subparsers.add_parser(
        "train", help="fine-tune a language model with RL on a task",
        description="Train a policy LM with RL on a task, evaluating it on held-out prompts before and after. "
                    "Writes the run folder: model.zip (SB3), hf/ (exported HF model), progress.csv, TensorBoard "
                    "events, reward_curve.png, eval.json.")
    add_common_env_args(train)
    train.add_argument("--algo", default="token-ppo", help=", ".join(ALGORITHMS))
    train.add_argument("--timesteps", type=positive_int, default=32_768, help="budget in generated tokens")
    train.add_argument("--kl-coef", type=non_negative_float, default=0.05, help="KL penalty coefficient beta")
    train.add_argument("--kl-target", type=positive_float, default=None,
                       help="adaptive KL target per sequence, token-ppo and the critic-free algorithms "
                            "(default: none, kl-coef stays fixed)")
    train.add_argument("--num-envs", type=positive_int, default=16, help="parallel episodes")
    train.add_argument("--learning-rate", type=positive_float, default=None,
                       help=f"default: by model size, full / with --lora-r: {sizes} (the algorithm's: {rates})")
    train.add_argument("--seed", type=non_negative_int, default=0, help="training seed")
    train.add_argument("--eval-n", type=positive_int, default=64, help="held-out prompts evaluated before and after")
    train.add_argument("--eval-seed", type=non_negative_int, default=EVAL_SEED,
                       help="seed of the held-out prompts and their sampling; `textgen-rl eval --seed` has the same, "
                            "so eval reproduces the after figures")
    train.add_argument("--out", default=None,
                       help="run folder, new or empty (default: runs/<task>-<algo>-<date>-<time>)")
    train.add_argument("--lora-r", type=positive_int, default=None,
                       help="train LoRA adapters of this rank (peft) instead of every weight; the reference is then "
                            "the base with the adapters disabled (default: full fine-tuning)")
    train.add_argument("--lora-alpha", type=positive_float, default=None, help="LoRA alpha (default: 2 x rank)")
    train.add_argument("--lora-targets", default="all-linear",
                       help="modules that get adapters: all-linear, or comma-separated names (q_proj,v_proj)")
    train.add_argument("--merge", action="store_true",
                       help="with --lora-r: also export hf-merged/, the adapters merged into a plain model")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the update: less memory for long sequences")
    train.add_argument("--checkpoint-every", type=non_negative_int, default=10,
                       help="updates between checkpoints (0: none); a killed run continues with --resume")
    train.add_argument("--resume", default=None, metavar="RUN",
                       help="continue the run in folder RUN (killed or interrupted) to its original budget, with "
                            "the settings stored in RUN/run.json; give no other training flag")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval", help="score a model on a task's held-out prompts",
        description="Sample one completion per held-out prompt and report the mean score (with its standard "
                    "error), the KL to the reference model and distinct-n.")
    add_common_env_args(evaluate)
    evaluate.add_argument("--n", type=positive_int, default=64, help="number of held-out completions")
    evaluate.add_argument("--seed", type=non_negative_int, default=EVAL_SEED,
                          help="seed of the held-out prompts and their sampling; `textgen-rl train --eval-seed` has "
                               "the same, so the after figures of a run reproduce")
    evaluate.add_argument("--reference", default=None,
                          help="reference model of the KL (default: the base recorded in an exported run, else "
                               "--model)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_eval)


def _reward_args(spec: str | None) -> tuple[str | None, dict[str, Any] | None]:
    if spec is None:
        return None, None
    from text_envs.rewards.learned import parse_reward_spec

    return parse_reward_spec(spec)


def _check_common(args: argparse.Namespace) -> None:
    """Checks shared by train and eval: cheap (no model is loaded), naming the flag in every message."""
    if args.env != "TextChat-v0" and (args.max_turns is not None or args.max_turn_tokens is not None):
        raise CLIError("--max-turns and --max-turn-tokens apply to --env TextChat-v0")
    if args.env == "TextChat-v0" and args.reward_model is not None:
        raise CLIError("--reward-model applies to TextGen-v0: in TextChat-v0 the responder pays the rewards")
    from text_envs.models import check_model_name
    from text_envs.rewards import get_reward_info
    from text_envs.tasks import get_task

    try:
        if args.env == "TextChat-v0":
            from text_envs.responders import build_responder, responder_factory

            build_responder(responder_factory(args.task))
        else:
            get_task(args.task)
    except TextEnvsError as error:
        raise CLIError(f"--task {args.task}: {error}") from None
    for flag, value in (("--model", args.model), ("--reference", getattr(args, "reference", None))):
        if value is not None:
            try:
                check_model_name(value)
            except TextEnvsError as error:
                raise CLIError(f"{flag} {value}: {error}") from None
    name, kwargs = _reward_args(args.reward_model)
    if name is not None:
        try:
            get_reward_info(name)
        except TextEnvsError as error:
            raise CLIError(f"--reward-model {args.reward_model}: {error}") from None
        if name == "learned" and not Path(kwargs["path"]).expanduser().is_dir():
            raise CLIError(f"--reward-model {args.reward_model}: {kwargs['path']!r} is not a folder (train one with "
                           "`textgen-rl train-rm`)")
    from text_envs.devices import (
        resolve_device,  # imports torch: after the checks that need none
    )

    try:
        resolve_device(args.device)
    except TextEnvsError as error:
        raise CLIError(f"--device {args.device}: {error}") from None


def _check_out(out: str | None, task: str, algo: str) -> Path:
    """The run folder, checked for writability WITHOUT creating it (it is created once training starts)."""
    path = Path(out).expanduser() if out else Path("runs") / f"{task}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {str(path)!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise CLIError(f"--out {str(path)!r} is not empty (an earlier run?): continue it with `textgen-rl train "
                       f"--resume {path}`, or choose another folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:  # a probe file in the nearest existing folder: os.access says yes to root even on /proc
        handle, probe = tempfile.mkstemp(prefix=".textgen-rl-write-test-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CLIError(f"--out {str(path)!r}: output folder is not writable ({str(parent)!r}: "
                       f"{error.strerror or error})") from None
    return path


def _validate_train(args: argparse.Namespace) -> Path:
    from agents.algorithm_registry import ALGORITHMS

    if args.algo not in ALGORITHMS:
        raise CLIError(f"--algo {args.algo}: unknown algorithm; known: {', '.join(ALGORITHMS)}")
    if args.kl_target is not None and ALGORITHMS[args.algo].entropy_for_kl:
        raise CLIError(f"--kl-target applies to token-ppo and the critic-free algorithms, not to {args.algo}")
    if args.kl_target is not None and args.kl_coef == 0:
        raise CLIError("--kl-target adapts the KL coefficient: it needs --kl-coef > 0 (a reference model)")
    if args.lora_r is None and (args.merge or args.lora_alpha is not None or args.lora_targets != "all-linear"):
        raise CLIError("--merge, --lora-alpha and --lora-targets apply to LoRA training: add --lora-r R")
    if args.lora_r is not None:
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise CLIError("--lora-r needs the peft package: pip install 'textgen-rl[lora]'")
    _check_common(args)
    return _check_out(args.out, args.task.replace(":", "-"), args.algo)


def _print_metrics(title: str, result: Any) -> None:
    print(f"\n{title}: score {result.score_mean:+.4f} (SE {result.score_se:.3f}, std {result.score_std:.3f}), "
          f"KL {result.kl_mean:.3f}, distinct-1 {result.distinct_1:.3f}, distinct-2 {result.distinct_2:.3f}, "
          f"length {result.length_mean:.1f}, n={result.n}")
    for sample in result.samples:
        print(f"  [{sample['score']:+.3f}] {sample['prompt']!r} -> {sample['text']!r}")


def _settings(args: argparse.Namespace) -> Any:
    from agents.training import RunSettings

    return RunSettings(task=args.task, algo=args.algo, env=args.env, max_turns=args.max_turns,
                       max_turn_tokens=args.max_turn_tokens, model=args.model, reward_model=args.reward_model,
                       max_new_tokens=args.max_new_tokens, device=args.device, threads=args.threads,
                       timesteps=args.timesteps, kl_coef=args.kl_coef, kl_target=args.kl_target,
                       num_envs=args.num_envs, learning_rate=args.learning_rate, seed=args.seed,
                       eval_n=args.eval_n, eval_seed=args.eval_seed, checkpoint_every=args.checkpoint_every,
                       lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
                       merge=args.merge, gradient_checkpointing=args.gradient_checkpointing)


def _resumed_run(args: argparse.Namespace) -> tuple[Path, Any]:
    """The folder and stored settings of ``--resume RUN``; no other training flag may be given."""
    from agents.training import RunSettings, read_settings

    out = Path(args.resume).expanduser()
    if not out.is_dir():
        raise CLIError(f"--resume {args.resume}: no such run folder")
    given = [f"--{name.replace('_', '-')}" for name, default in vars(RunSettings()).items()
             if name != "extra" and getattr(args, name) != default]
    if args.out is not None:
        given.append("--out")
    if given:
        raise CLIError(f"--resume continues the run with the settings stored in {out / 'run.json'}; drop "
                       f"{', '.join(given)}")
    try:
        return out, read_settings(out)
    except TextEnvsError as error:
        raise CLIError(f"--resume {args.resume}: {error}") from None


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume), evaluate before/after, and write the run folder (under torchrun: data-parallel)."""
    from agents import distributed

    started_group = not distributed.is_initialized()
    try:
        return _run_train(args)
    finally:
        if started_group:
            distributed.shutdown()


def _run_train(args: argparse.Namespace) -> int:
    from agents import distributed
    from agents.checkpoint import has_checkpoint
    from agents.training import DONE_FILE, check_distributed_algo, run_training

    if args.resume is not None:
        out, settings = _resumed_run(args)
    else:
        out, settings = _validate_train(args), _settings(args)
    distributed.init_from_env(settings.device)
    if args.resume is not None and (out / DONE_FILE).is_file() and not has_checkpoint(out):
        if distributed.is_main():
            print(f"the run in {out} is complete ({DONE_FILE} written); nothing to resume")
        return 0
    if distributed.is_distributed():
        try:
            check_distributed_algo(settings.algo)
        except TextEnvsError as error:
            raise CLIError(str(error)) from None
        out = Path(distributed.broadcast_object(str(out)))  # rank 0's (default) folder name
        distributed.barrier()  # every rank has checked the (still empty) folder before rank 0 writes into it
    titles = {"before": "before training", "after": "after training"}
    outcome = run_training(settings, out, resume=args.resume is not None,
                           report=lambda stage, result: _print_metrics(titles[stage], result))
    if not distributed.is_main():
        return 0
    summary = outcome.summary
    if outcome.resumed_from is not None:
        print(f"\nresumed from the checkpoint at {outcome.resumed_from} generated tokens")
    print(f"\n{'metric':<12}{'before':>10}{'after':>10}")
    for key in ("score_mean", "score_se", "kl_mean", "distinct_1", "distinct_2"):
        print(f"{key:<12}{getattr(outcome.before, key):>10.4f}{getattr(outcome.after, key):>10.4f}")
    ranks = f" on {summary['world_size']} ranks" if summary["world_size"] > 1 else ""
    print(f"\ntrained {summary['timesteps']} generated tokens (budget {summary['budget']}){ranks} in "
          f"{summary['seconds']:.0f} s ({summary['tokens_per_second']:.0f} tokens/s); run folder: {out} (model.zip, "
          "hf/, progress.csv, TensorBoard events, reward_curve.png, eval.json)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a model (alias, path or exported run) on held-out prompts."""
    _check_common(args)
    from agents.evaluation import evaluate_model
    from text_envs.models import configure_threads

    configure_threads(args.threads)
    reward_model, reward_kwargs = _reward_args(args.reward_model)
    result = evaluate_model(args.model, task=args.task, n=args.n, reference_model=args.reference,
                            reward_model=reward_model, reward_kwargs=reward_kwargs,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device,
                            env_id=args.env, max_turns=args.max_turns, max_turn_tokens=args.max_turn_tokens)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        _print_metrics(f"{args.model} on {args.task}", result)
    return 0
