"""Rerun the README's main job and check that its table still says what the job prints.

    python scripts/check_readme_numbers.py            # rerun the Makefile's MAIN_JOB, compare, exit 1 on a difference
    python scripts/check_readme_numbers.py --update   # rerun and rewrite the table in README.md
    python scripts/check_readme_numbers.py --run-dir runs/main-job   # check an existing run folder instead

The table lives between two marker comments in README.md and is rendered from the run's ``eval.json``
by :func:`render`, at the precision the README prints: a deterministic run (fixed threads and seeds)
reproduces it character for character, so any difference means the code, the locked versions or the
machine changed the figures. CI runs this script on the lock.
"""

from __future__ import annotations

import argparse
import difflib
import json
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


def main_job_command() -> list[str]:
    """The main job as `make train` runs it: the Makefile's ``MAIN_JOB :=`` line."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("MAIN_JOB :="):
            return line.split(":=", 1)[1].split()
    raise SystemExit("the Makefile has no 'MAIN_JOB := ...' line")


COMMAND = main_job_command()


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "\N{MINUS SIGN}")


def render(summary: dict) -> str:
    """The README block for one run's ``eval.json``."""
    before, after = summary["before"], summary["after"]
    lines = [
        BEGIN,
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
    fresh = render(summary)
    text = README.read_text(encoding="utf-8")
    current = readme_block(text)
    if args.update:
        write_text_atomic(README, text.replace(current, fresh))
        print("README.md main-job table updated")
        return 0
    if current == fresh:
        print("README.md main-job table matches the run")
        return 0
    print("README.md main-job table differs from the run (README -> run):")
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), "README.md", "run"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
