"""Parallel sweeps: the wall time of one ``compare`` sweep (2 algorithms x 2 seeds = 4 runs on the bundled tiny
LM) on the ray backend with 2 workers (one torch thread each) over the local backend (the 4 runs one after the
other in this process, ``--threads`` threads).

Each repeat runs both sweeps, alternated, into fresh folders (nothing cached), and times the whole
``compare()`` call: the ray figure includes starting the local Ray instance and its workers (about 10 s) and
shutting it down. The runs are seeded and, with one thread, give the same records on both backends (checked
here). The ideal ratio is the number of workers when each has a free core (goal >= 1.7 with 2 workers on 2
cores); another process using the cores lowers it.

    python benchmarks/compare_parallel.py --timesteps 2048 --repeats 1
    python benchmarks/compare_parallel.py --toy      # smallest size (a smoke test; timings meaningless)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

WORKERS = 2
TARGET = 1.7
ALGOS = "token-ppo,grpo"
SEEDS = 2


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the local backend (default 1; each "
                                                          "Ray worker has one)")
    p.add_argument("--timesteps", type=int, default=2048, help="budget per run in generated tokens (default 2048)")
    p.add_argument("--num-envs", type=int, default=4, help="parallel episodes per run (default 4)")
    p.add_argument("--eval-n", type=int, default=8, help="held-out prompts per evaluation (default 8)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of both sweeps; the median is reported "
                                                          "(default 1)")
    p.add_argument("--toy", action="store_true", help="smallest size: 16 tokens per run, 2 prompts, 1 repeat")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="folder of the JSON result")
    args = p.parse_args(argv)
    if args.toy:
        args.timesteps, args.eval_n, args.repeats = 16, 2, 1
    return args


def _sweep(args: argparse.Namespace, out: Path, **backend: object) -> tuple[float, list[dict]]:
    """One sweep into ``out``: its wall time (s) and its run records."""
    from agents.compare import compare

    fast = {"n_steps": 8, "batch_size": 8}
    start = time.perf_counter()
    result = compare(tasks="sentiment", algos=ALGOS, seeds=SEEDS, timesteps=args.timesteps, out=out, model="tiny",
                     num_envs=args.num_envs, eval_n=args.eval_n, device="cpu",
                     hyperparams={name: fast for name in ALGOS.split(",")}, progress=False, plot=False,
                     bootstrap_reps=100, **backend)
    seconds = time.perf_counter() - start
    assert result.counts["trained"] == SEEDS * len(ALGOS.split(",")), result.counts  # nothing reused
    return seconds, result.runs


def main(argv: list[str] | None = None) -> dict:
    args = _arguments(argv)
    common.pin_threads(args.threads)
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    run_seconds: dict[str, list[float]] = {"local": [], "ray": []}
    same_records = True
    with tempfile.TemporaryDirectory(prefix="compare-parallel-") as tmp:
        for repeat in range(args.repeats):  # alternated, so a change of machine load hits both alike
            runs = {}
            for name, backend in (("local", {}), ("ray", {"backend": "ray", "workers": WORKERS})):
                wall, runs[name] = _sweep(args, Path(tmp) / f"{name}-{repeat}", **backend)
                seconds[name].append(wall)
                run_seconds[name].append(sum(r["wall_time_s"] for r in runs[name]))
                print(f"repeat {repeat + 1}/{args.repeats}, {name}: {wall:.1f} s", flush=True)
            same_records &= all((a["score_mean"], a["curve"]) == (b["score_mean"], b["curve"])
                                for a, b in zip(runs["local"], runs["ray"]))
    stats = {name: common.summarize(values) for name, values in seconds.items()}
    label = {"local": f"local backend, 1 process x {args.threads} thread(s)",
             "ray": f"ray backend, {WORKERS} workers x 1 thread"}
    print(f"\n{SEEDS * len(ALGOS.split(','))} runs ({ALGOS} x {SEEDS} seeds, {args.timesteps} tokens each, tiny LM): "
          f"wall time of the sweep")
    print("| backend | seconds (median) | min | max | sum of the runs' own wall times (median) |")
    print("|---|---:|---:|---:|---:|")
    for name in seconds:
        print(f"| {label[name]} | {stats[name]['median']:.1f} | {stats[name]['min']:.1f} | {stats[name]['max']:.1f} | "
              f"{common.summarize(run_seconds[name])['median']:.1f} |")
    key = f"ray_{WORKERS}_workers_vs_local"
    ratios = {key: round(stats["local"]["median"] / stats["ray"]["median"], 3)}
    print(f"\nray ({WORKERS} workers) / local: {ratios[key]:.2f}x faster (goal >= {TARGET}x); same records on both "
          f"backends: {same_records}")
    payload = {"ratios": ratios, "targets": {key: TARGET}, "same_records": same_records,
               "results": {label[name]: {**stats[name], "runs_wall_time_s": common.summarize(run_seconds[name])}
                           for name in seconds},
               "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"algos": ALGOS, "seeds": SEEDS,
                                                                                  "workers": WORKERS},
               "model": common.describe_model(common.resolve_model("tiny")),
               "environment": common.environment(args.threads)}
    common.write_result("compare_parallel_toy" if args.toy else "compare_parallel", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
