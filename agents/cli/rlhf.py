"""``textgen-rl label`` (collect human feedback in a local web page) and ``textgen-rl train-rm``.

Examples::

    textgen-rl label --model tiny --task sentiment --n 20 --k 2 --out feedback.jsonl
    textgen-rl label --model tiny --task sentiment --n 300 --k 2 --out synthetic.jsonl --oracle length
    textgen-rl train-rm --data feedback.jsonl --base minilm --out rm/
    # then: make_reward("learned", path="rm/")  /  --reward-model learned:rm/
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

LABEL_EXAMPLE = "textgen-rl label --model tiny --task sentiment --n 20 --k 2 --out feedback.jsonl"
ORACLE_EXAMPLE = "textgen-rl label --model tiny --task sentiment --n 300 --k 2 --out synthetic.jsonl --oracle length"


def register(subparsers: Any) -> None:
    _register_label(subparsers)
    _register_train_rm(subparsers)


# --------------------------------------------------------------------------- label


def _register_label(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "label",
        help="collect human feedback on model completions in a local web page",
        description=(
            "Generate K completions for each of N task prompts and serve a local page where you pick the better "
            "completion (compare), rate each 1-5 (rate) or rank them (rank). Every answer is appended to --out "
            "immediately; rerun the same command to resume. Keys: 1/2 (or 1-5 / numbers in order) answer, "
            "s skip, u undo."
        ),
        epilog=f"example: {LABEL_EXAMPLE}; simulated labeller (no page): {ORACLE_EXAMPLE}",
    )
    parser.add_argument("--out", required=True, help="feedback JSONL file (appended to; the items are cached in OUT.items.json)")
    parser.add_argument("--model", default="tiny", help="causal LM that writes the completions (alias, folder or hub id; default: tiny)")
    parser.add_argument("--task", default="sentiment", help="task whose train prompts are used (default: sentiment)")
    parser.add_argument("--n", type=int, default=20, help="number of prompts (default: 20)")
    parser.add_argument("--k", type=int, default=2, help="completions per prompt (default: 2)")
    parser.add_argument("--mode", choices=("compare", "rate", "rank"), default="compare", help="kind of feedback (default: compare)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="completion length (default: the task's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default: 0.95)")
    parser.add_argument("--device", default="auto", help="device for generation: auto, cpu, cuda[:N] (default: auto)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind: 127.0.0.1, localhost or ::1")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 = any free port)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument(
        "--linger", type=float, default=3.0, help="seconds to keep serving after the last answer (default: 3)"
    )
    oracle = parser.add_argument_group(
        "simulated labeller",
        "answer every item with a registered reward model instead of serving the page (same JSONL lines; "
        "see agents.rlhf.oracle)",
    )
    oracle.add_argument(
        "--oracle",
        metavar="REWARD[:KWARGS]",
        default=None,
        help="reward model that answers: a name (sentiment, length...), name:{json kwargs}, name:key=value,... "
        "or learned:FOLDER; compare picks the higher score, rate maps scores to 1-5, rank sorts by score",
    )
    oracle.add_argument(
        "--oracle-margin",
        type=float,
        metavar="M",
        default=0.0,
        help="compare/rank: score differences <= this are ties and the item is skipped (default: 0)",
    )
    oracle.add_argument(
        "--oracle-rating",
        default="quantile",
        metavar="{quantile,minmax,LO,HI}",
        help="rate: score -> 1..5 by session quantiles (default), linearly between the session's min and max, "
        "or linearly from the fixed range LO,HI (write --oracle-rating=-1,1 when LO is negative)",
    )
    parser.set_defaults(func=run_label)


def _validate_label_args(args: argparse.Namespace) -> None:
    from agents.rlhf.label_server import check_loopback_host
    from text_envs.errors import ConfigError

    check_loopback_host(args.host)
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: expected at least 1 prompt")
    minimum = 1 if args.mode == "rate" else 2
    if args.k < minimum:
        raise ConfigError(f"--k {args.k}: mode {args.mode} needs at least {minimum} completions per prompt")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: expected >= 1")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature {args.temperature}: expected > 0")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p {args.top_p}: expected a number in (0, 1]")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 0..65535")
    if not args.linger >= 0:
        raise ConfigError(f"--linger {args.linger}: expected >= 0")
    if args.oracle is not None:
        from agents.rlhf.oracle import parse_oracle_spec, parse_rating_scale

        parse_oracle_spec(args.oracle)
        parse_rating_scale(args.oracle_rating)
        if not (args.oracle_margin >= 0 and args.oracle_margin != float("inf")):
            raise ConfigError(f"--oracle-margin {args.oracle_margin}: expected a finite number >= 0")


def _generations(args: argparse.Namespace) -> list:
    """The session's completions: reused from ``<out>.items.json`` or sampled (and cached) now."""
    from agents.rlhf.generate import GenerationSettings, generate_completions, load_or_generate, task_prompts
    from text_envs.tasks import get_task

    max_new_tokens = args.max_new_tokens or get_task(args.task).max_new_tokens
    settings = GenerationSettings(
        model=args.model,
        task=args.task,
        n=args.n,
        k=args.k,
        seed=args.seed,
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )

    def generate() -> list:
        from text_envs.models import load_model, load_tokenizer

        print(f"generating {args.k} completions for {args.n} prompts with {args.model}...", file=sys.stderr, flush=True)
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, device=args.device)
        return generate_completions(
            model,
            tokenizer,
            task_prompts(args.task, args.n),
            args.k,
            max_new_tokens=max_new_tokens,
            seed=args.seed,
            temperature=args.temperature,
            top_p=args.top_p,
        )

    return load_or_generate(args.out, settings, generate)


def run_label(args: argparse.Namespace) -> int:
    from agents.rlhf.data import FeedbackWriter
    from agents.rlhf.generate import build_items
    from agents.rlhf.label_server import LabelSession

    _validate_label_args(args)
    oracle = None
    if args.oracle is not None:  # built first: a bad reward name fails before any generation
        from agents.rlhf.oracle import make_oracle

        oracle = make_oracle(args.oracle, device=args.device)
    with FeedbackWriter(args.out) as writer:  # takes the file lock first: fail fast if in use
        items = build_items(_generations(args), args.mode)
        session = LabelSession(items, writer, mode=args.mode, meta={"model": args.model, "task": args.task})
        if session.finished:
            print(f"all {len(items)} items are already answered in {args.out}; nothing to do")
            return 0
        if oracle is not None:
            return _label_with_oracle(args, session, oracle)
        return _serve(args, session)


def _serve(args: argparse.Namespace, session: Any) -> int:
    """Serve the labelling page until every item is done (plus ``--linger``) or Ctrl-C."""
    from agents.rlhf.generate import items_path_for
    from agents.rlhf.label_server import LabelServer

    server = LabelServer(session, host=args.host, port=args.port)
    server.start()
    try:
        state = session.state()
        print(
            f"labelling {state['total']} items ({state['done']} done) at {server.url}\n"
            f"answers -> {args.out} (items cached in {items_path_for(args.out)}); Ctrl-C to stop, rerun to resume",
            flush=True,
        )
        if not args.no_browser:
            import webbrowser

            webbrowser.open(server.url)
        while True:
            if session.wait_finished(timeout=0.5):
                time.sleep(args.linger)  # let the page show "all done"; an undo reopens the session
                if session.finished:
                    break
    except KeyboardInterrupt:
        state = session.state()
        print(f"\nstopped with {state['done']}/{state['total']} items done; rerun the same command to resume", file=sys.stderr)
        raise
    finally:
        server.stop()
    state = session.state()
    print(f"done: {state['answered']} answered, {state['skipped']} skipped; feedback in {args.out}")
    return 0


def _label_with_oracle(args: argparse.Namespace, session: Any, oracle: Any) -> int:
    from agents.rlhf.oracle import parse_rating_scale, run_oracle

    summary = run_oracle(
        session,
        oracle,
        spec=args.oracle,
        margin=args.oracle_margin,
        rating_scale=parse_rating_scale(args.oracle_rating),
    )
    state = session.state()
    tie = " as ties" if summary.skipped else ""
    print(
        f"oracle {args.oracle}: {summary.answered} answered, {summary.skipped} skipped{tie} "
        f"({summary.already_done} already done, {state['done']}/{state['total']} items done); feedback in {args.out}"
    )
    return 0


# --------------------------------------------------------------------------- train-rm


def _register_train_rm(subparsers: Any) -> None:
    from agents.rlhf.reward_training import RewardTrainingConfig

    parser = subparsers.add_parser(
        "train-rm",
        help="train a reward model from a feedback JSONL file",
        description=(
            "Fine-tune a sequence-classification model with a scalar head on human feedback: Bradley-Terry loss on "
            "preference pairs (rankings give all their pairs), MSE on standardised ratings. Saves a Hugging Face "
            "model folder plus reward_model.json, usable as make_reward('learned', path=OUT) or "
            "--reward-model learned:OUT."
        ),
        epilog="example: textgen-rl train-rm --data feedback.jsonl --base minilm --out rm/",
    )
    for f in dataclasses.fields(RewardTrainingConfig):
        help_text = f.metadata.get("help", "").replace("%", "%%")
        option = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            if f.default is True:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=f"turn off: {help_text}")
            else:
                parser.add_argument(option, dest=f.name, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
        if f.default is dataclasses.MISSING:
            parser.add_argument(option, dest=f.name, type=kind, required=True, help=help_text)
        else:
            parser.add_argument(option, dest=f.name, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")
    parser.set_defaults(func=run_train_rm)


def run_train_rm(args: argparse.Namespace) -> int:
    from agents.rlhf.reward_training import RewardTrainingConfig, train_reward_model

    names = [f.name for f in dataclasses.fields(RewardTrainingConfig)]
    config = RewardTrainingConfig(**{name: getattr(args, name) for name in names})

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = train_reward_model(config, log=log)
    metrics = result.metrics
    parts = []
    if metrics.get("val_pairwise_accuracy") is not None:
        parts.append(f"val pairwise accuracy {metrics['val_pairwise_accuracy']:.3f} on {metrics['val_pairs']} pairs")
    if metrics.get("val_rating_pearson") is not None:
        parts.append(f"val rating correlation {metrics['val_rating_pearson']:.3f} on {metrics['val_ratings']} ratings")
    summary = "; ".join(parts) or "no validation split"
    print(f"saved reward model to {result.out} ({summary}); use it with --reward-model learned:{config.out}")
    return 0


__all__ = ["register", "run_label", "run_train_rm"]
