"""Rerun the README's main job and check that its table still says what the job prints.

    python scripts/check_readme_numbers.py            # rerun the Makefile's MAIN_JOB, compare, exit 1 on a difference
    python scripts/check_readme_numbers.py --update   # rerun and rewrite the table in README.md
    python scripts/check_readme_numbers.py --run-dir runs/main-job   # check an existing run folder instead

The table lives between two marker comments in README.md and is rendered from the run's ``eval.json``
by :func:`render`, at the precision the README prints, with a line naming the machine it was measured on
(:func:`machine`: CPU model, torch's CPU capability, a hash of the CPU's feature flags). The run is
deterministic (fixed threads and seeds), so on that kind of machine it reproduces the table character for
character, and any difference means the code or the locked versions changed the figures: the check fails.

On another kind of CPU the vector kernels differ (MKL's and ATen's AVX2 / AVX-512 paths), the first rounding
difference changes a sampled token, and the figures change with it; there the check is statistical
(:func:`same_within_error`): both held-out scores within 3 standard errors of the table's, and the job still
learns (after - before >= 1 standard error of the difference). It prints the difference either way. CI runs
this script on the lock.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from text_envs.atomic import write_text_atomic  # noqa: E402

README = REPO / "README.md"
BEGIN = "<!-- main-job-table: begin (written and checked by scripts/check_readme_numbers.py; do not edit) -->"
END = "<!-- main-job-table: end -->"
MACHINE_PREFIX = "Measured on: "
#: cross-machine tolerance: scores within this many standard errors of the table's
SCORE_TOLERANCE_SE = 3.0
#: cross-machine check that the job learns: after - before at least this many standard errors of the difference
MIN_GAIN_SE = 1.0
ROW = re.compile(r"\| ([+\N{MINUS SIGN}][0-9.]+) ± ([0-9.]+) → \*\*([+\N{MINUS SIGN}][0-9.]+)\*\* ± ([0-9.]+) \|")


def main_job_command() -> list[str]:
    """The main job as `make train` runs it: the Makefile's ``MAIN_JOB :=`` line."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("MAIN_JOB :="):
            return line.split(":=", 1)[1].split()
    raise SystemExit("the Makefile has no 'MAIN_JOB := ...' line")


COMMAND = main_job_command()


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "\N{MINUS SIGN}")


def machine() -> str:
    """What this machine's figures depend on: CPU model, architecture, torch's CPU capability (the ATen kernels
    it dispatches to) and the first 8 hex digits of the SHA-256 of the CPU's sorted feature flags."""
    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines (Linux)
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or "unknown CPU"
    flags = " ".join(sorted((info.get("flags") or info.get("Features") or "").split()))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:8]
    return (f"{model} ({platform.machine()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"CPU flags {digest})")


def render(summary: dict, measured_on: str) -> str:
    """The README block for one run's ``eval.json``, measured on the machine ``measured_on``."""
    before, after = summary["before"], summary["after"]
    lines = [
        BEGIN,
        f"{MACHINE_PREFIX}{measured_on}.",
        "",
        "| run | held-out score before → after (± SE) | KL to reference after (nats/sequence) "
        "| distinct-2 before → after | generated tokens |",
        "|---|---|---:|---|---:|",
        f"| `make train` (seed {summary['seed']}) "
        f"| {_signed(before['score_mean'])} ± {before['score_se']:.3f} → **{_signed(after['score_mean'])}** "
        f"± {after['score_se']:.3f} | {after['kl_mean']:.2f} | {before['distinct_2']:.3f} → {after['distinct_2']:.3f} "
        f"| {summary['timesteps']:,} |",
        "",
        f"Samples on held-out prompts ({summary['after']['n']} evaluated; the first four, before → after):",
        "",
        "```",
    ]
    for old, new in zip(before["samples"], after["samples"]):
        lines.append(f"{old['prompt']!r}")
        lines.append(f"    before [{old['score']:+.2f}] {old['text']!r}")
        lines.append(f"    after  [{new['score']:+.2f}] {new['text']!r}")
    lines += ["```", END]
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The block between the markers (inclusive)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md has no main-job table between {BEGIN!r} and {END!r}")
    return text[start:end + len(END)]


def table_machine(block: str) -> str | None:
    """The machine line of a README block (None: a block without one)."""
    for line in block.splitlines():
        if line.startswith(MACHINE_PREFIX):
            return line[len(MACHINE_PREFIX):].rstrip(".")
    return None


def table_scores(block: str) -> tuple[float, float, float, float]:
    """(before, before SE, after, after SE) of a README block's table row."""
    found = ROW.search(block)
    if found is None:
        raise SystemExit("the README's main-job table has no 'before ± SE → **after** ± SE' cell")
    return tuple(float(v.replace("\N{MINUS SIGN}", "-")) for v in found.groups())  # type: ignore[return-value]


def same_within_error(table: tuple[float, float, float, float], summary: dict) -> tuple[bool, str]:
    """The cross-machine check of a run against the README's scores: (passed, explanation)."""
    before, before_se, after, after_se = table
    run_before, run_after = summary["before"], summary["after"]
    reasons = []
    for name, old, old_se, new in (("before", before, before_se, run_before),
                                   ("after", after, after_se, run_after)):
        se = math.hypot(old_se, new["score_se"])
        distance = abs(new["score_mean"] - old) / se
        reasons.append(f"{name}: {new['score_mean']:+.3f} vs the table's {old:+.3f}, {distance:.1f} SE apart "
                       f"(limit {SCORE_TOLERANCE_SE:g})")
        if distance > SCORE_TOLERANCE_SE:
            return False, "; ".join(reasons)
    gain = (run_after["score_mean"] - run_before["score_mean"]) / math.hypot(run_after["score_se"],
                                                                             run_before["score_se"])
    reasons.append(f"gain {gain:.1f} SE (at least {MIN_GAIN_SE:g})")
    return gain >= MIN_GAIN_SE, "; ".join(reasons)


def run_main_job(out: Path) -> dict:
    """Run the main job into ``out`` with this interpreter; returns its eval.json."""
    command = [sys.executable, "-m", "agents.cli", *COMMAND, "--out", str(out)]
    print("running: textgen-rl", " ".join(COMMAND), "--out", out, flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads((out / "eval.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the README table instead of checking it")
    parser.add_argument("--run-dir", type=Path, default=None, help="use this finished run folder instead of training")
    args = parser.parse_args(argv)
    if args.run_dir is not None:
        summary = json.loads((args.run_dir / "eval.json").read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="main-job-") as folder:
            summary = run_main_job(Path(folder) / "run")
    here = machine()
    fresh = render(summary, here)
    text = README.read_text(encoding="utf-8")
    current = readme_block(text)
    if args.update:
        write_text_atomic(README, text.replace(current, fresh))
        print("README.md main-job table updated")
        return 0
    return check(current, fresh, summary, here)


def check(current: str, fresh: str, summary: dict, here: str) -> int:
    """Compare the README block ``current`` with the run's ``fresh`` one; print the verdict, return the exit code."""
    if current == fresh:
        print("README.md main-job table matches the run")
        return 0
    print("README.md main-job table differs from the run (README -> run):")
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), "README.md", "run"))
    measured_on = table_machine(current)
    if measured_on == here:
        print(f"\nsame machine as the table's ({here}): the code or the locked versions changed the figures")
        return 1
    passed, why = same_within_error(table_scores(current), summary)
    print(f"\nthe table was measured on {measured_on or 'an unnamed machine'}, this is {here}: other vector kernels, "
          f"other sampled tokens; checked within the scores' errors instead: {why}: "
          f"{'passed' if passed else 'FAILED'} (scripts/check_readme_numbers.py --update makes the table this "
          f"machine's)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
