"""``textgen-rl compare``: several algorithms x seeds (x tasks) with the same budget of generated tokens.

Writes ``results.csv``, ``summary.md`` (rliable's cross-task IQM table and probability-of-improvement matrix
first), ``curves.png``, ``intervals.png`` and ``profiles.png`` under ``--out`` (see :func:`agents.compare.compare`);
rerunning the same command skips the runs already finished. ``--backend ray`` runs the runs in parallel as Ray
tasks (:mod:`agents.compare_ray`), on a local Ray instance or, with ``--address``, on a cluster.
"""

from __future__ import annotations

import argparse
import math

from agents.cli.arguments import non_negative_float, non_negative_int, positive_float, positive_int


def task_reference(text: str) -> tuple[str, float]:
    """``TASK=SCORE`` (a fixed reference score of a task) as ``(task, score)``."""
    task, sep, value = text.partition("=")
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not sep or not task.strip() or not math.isfinite(score):
        raise argparse.ArgumentTypeError(f"expected TASK=SCORE with a finite SCORE, got {text!r}")
    return task.strip(), score


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    from agents.algorithm_registry import ALGORITHMS

    parser = subparsers.add_parser("compare", help="compare RL algorithms with the same token budget",
                                   description="Train every algorithm x seed (x task) for the same number of "
                                               "generated tokens, evaluate on the same held-out prompts, and write "
                                               "results.csv, summary.md (rliable statistics: cross-task IQM, "
                                               "probability of improvement), curves.png, intervals.png and "
                                               "profiles.png. Resumable.")
    parser.add_argument("--task", default="sentiment",
                        help="task name (see `textgen-rl tasks`), or a responder for a multi-turn TextChat-v0 task "
                             "(see `textgen-rl responders`: guess-number, calculator, textarena:<GameId>)")
    parser.add_argument("--tasks", default=None,
                        help="several tasks, comma-separated (overrides --task), single- and multi-turn mixed, "
                             "e.g. sentiment,arithmetic,guess-number")
    parser.add_argument("--algos", default="token-ppo,ppo,reinforce,rloo,grpo",
                        help=f"comma-separated, from: {','.join(ALGORITHMS)}")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per algorithm")
    parser.add_argument("--timesteps", type=positive_int, default=4096, help="budget per run in generated tokens")
    parser.add_argument("--out", default="runs/compare",
                        help="output folder: finished runs with the same configuration are reused")
    parser.add_argument("--model", default="tiny", help="model alias or path (policy, reference and evaluation)")
    parser.add_argument("--num-envs", type=positive_int, default=8, help="parallel episodes per run")
    parser.add_argument("--eval-n", type=positive_int, default=32, help="held-out prompts per evaluation")
    parser.add_argument("--kl-coef", type=non_negative_float, default=0.05, help="KL penalty coefficient beta")
    parser.add_argument("--learning-rate", type=positive_float, default=None,
                        help="one learning rate for every algorithm (default: each algorithm's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads of the local backend (default: TEXTGEN_RL_THREADS or half the cores; "
                             "the ray backend runs each run with one)")
    parser.add_argument("--checkpoint-every", type=non_negative_int, default=10,
                        help="updates between the checkpoints of each run (0: none); a killed compare resumes "
                             "its unfinished runs mid-way when rerun")
    parser.add_argument("--reference", type=task_reference, action="append", default=None, metavar="TASK=SCORE",
                        help="fixed reference score of a task (normalised score 1; repeatable); default: the best "
                             "mean final score of any algorithm of the sweep on the task")
    parser.add_argument("--bootstrap-reps", type=positive_int, default=2000,  # agents.statistics.DEFAULT_REPS
                        help="stratified-bootstrap resamples of every confidence interval")
    parser.add_argument("--no-plot", action="store_true", help="skip curves.png, intervals.png and profiles.png")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: the runs one after the other in this process; ray: every run not finished "
                             "yet as a Ray task (one CPU, one torch thread each), in parallel; same output folder")
    parser.add_argument("--address", default=None,
                        help="ray backend: the address of a Ray cluster to join (default: start a local instance)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="ray backend: runs in parallel (default: the CPUs of this machine)")
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Run the comparison and print the summary table."""
    from agents.compare import _parse_names, compare
    from text_envs.errors import ConfigError
    from text_envs.models import configure_threads

    if args.backend != "ray" and (args.address is not None or args.workers is not None):
        raise ConfigError("--address and --workers are options of the ray backend: add --backend ray")
    configure_threads(args.threads)
    algos = _parse_names(args.algos)
    hyperparams = ({name: {"learning_rate": args.learning_rate} for name in algos}
                   if args.learning_rate is not None else None)
    result = compare(tasks=args.tasks or args.task, algos=algos, seeds=args.seeds, timesteps=args.timesteps,
                     out=args.out, model=args.model, num_envs=args.num_envs, eval_n=args.eval_n,
                     kl_coef=args.kl_coef, device=args.device, hyperparams=hyperparams, plot=not args.no_plot,
                     checkpoint_every=args.checkpoint_every, references=dict(args.reference or []),
                     bootstrap_reps=args.bootstrap_reps, backend=args.backend, workers=args.workers,
                     address=args.address)
    print(result.summary_markdown, end="")
    figures = [path for path in (result.curves_png, result.intervals_png, result.profiles_png) if path is not None]
    print(f"wrote {', '.join(str(p) for p in (result.results_csv, result.summary_md, *figures))}"
          + f"; runs: {result.counts['trained']} trained, {result.counts['resumed']} resumed, "
            f"{result.counts['reused']} reused")
    return 0
