"""Shared helpers of the benchmark scripts: options, the locally built benchmark model, prompts, reward,
timing (median and spread of repeats), result tables and JSON files.

This module must stay importable from a *separate* virtual environment that has only torch,
transformers and TRL (``benchmarks/_trl_runner.py`` imports it there): it imports nothing from
``text_envs`` or ``agents`` at module level.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUNDLED_DIR = REPO_ROOT / "text_envs" / "assets" / "tiny-lm"

#: Architecture of the default benchmark model (ANCHORS.md: 2 layers, width 128). The vocabulary is the
#: bundled SentencePiece tokenizer's 4096 tokens (ANCHORS used 2048): the LM head is twice as wide.
BENCH_MODEL = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256}

#: Fixed prompts (sentence openings) used by every benchmark, ours and TRL's.
PROMPTS = [
    "The film was", "My favourite thing about the city is", "Yesterday the weather", "The best meal I ever had",
    "When the train finally arrived", "Our neighbour's dog", "The old library on the corner",
    "After the long meeting we", "The children in the park", "Every morning I", "The new phone is",
    "At the end of the concert", "The museum opened a", "Learning to play the piano", "The river near my house",
    "On the first day of school", "The restaurant down the street", "My grandmother always said",
    "The garden in spring", "When I read the letter", "The mountain trail was", "The coffee this morning",
    "Our team won the", "The book I just finished", "At the market I found", "The storm last night",
    "The teacher smiled and", "My first job was", "The beach at sunset", "The song on the radio",
    "The little cat", "Walking home tonight",
]


def vowel_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Cheap programmatic reward: the fraction of the completion's letters that are vowels."""
    scores = []
    for text in completions:
        letters = [c for c in text.lower() if c.isalpha()]
        scores.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return scores


# ------------------------------------------------------------------------------------------ options
def parser(description: str, *, batch: int = 16, new_tokens: int = 64, repeats: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pinned; default 1)")
    p.add_argument("--model", default="bench",
                   help="'bench' (default: GPT-2 2 layers x 128 built locally, bundled 4096-token tokenizer, EOS "
                        "suppressed so episodes have exactly --new-tokens tokens), 'bench-eos' (same, EOS left "
                        "samplable), 'tiny' (the bundled 4-layer model) or a save_pretrained folder")
    p.add_argument("--batch", type=int, default=batch, help=f"parallel episodes / sequences (default {batch})")
    p.add_argument("--new-tokens", type=int, default=new_tokens, help=f"generated tokens per episode "
                                                                      f"(default {new_tokens})")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats; the median is reported "
                                                                f"(default {repeats})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON result")
    return p


def pin_threads(n: int) -> None:
    """Pin torch (and BLAS/OpenMP, for child processes) to ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TEXTGEN_RL_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass
    try:  # also mark text_envs' default as configured, so load_model does not change it
        from text_envs.models import configure_threads

        configure_threads(n)
    except ImportError:
        pass


# -------------------------------------------------------------------------------------------- model
_BUILT: dict[str, str] = {}


def build_bench_model(directory: str | Path, seed: int = 0, suppress_eos: bool = True, **overrides: int) -> Path:
    """Save a randomly initialised GPT-2 (``BENCH_MODEL`` + ``overrides``) with the bundled tokenizer.

    ``suppress_eos``: make EOS (practically) never sampled, so that every episode generates exactly
    ``--new-tokens`` tokens in every implementation (ours, the hand-written ceiling, TRL), as in
    ANCHORS' fixed-length measurements. A random model otherwise samples EOS with probability ~1/4096 per
    token: some episodes end early, the batch desynchronises, and each restart costs our env and policy an
    extra (small) prefill forward that the fixed-length loops never pay. Done by pointing EOS's (tied,
    never input) embedding row against a constant offset of the final layer norm's output:
    ``logit(EOS) <= -2 * (b - sqrt(n_embd))`` with the offset ``b = max(20, 2 sqrt(n_embd))``.
    """
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **{**BENCH_MODEL, **overrides})
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if suppress_eos:
        width = config.n_embd
        with torch.no_grad():
            model.transformer.ln_f.bias[0] = max(20.0, 2.0 * width ** 0.5)
            row = model.transformer.wte.weight[tokenizer.eos_token_id]
            row.zero_()
            row[0] = -2.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def resolve_model(spec: str, seed: int = 0) -> str:
    """``bench`` -> a freshly built folder (once per process; ``bench-eos`` keeps EOS samplable),
    ``tiny`` -> the bundled model, else the path."""
    if spec in ("bench", "bench-eos"):
        if spec not in _BUILT:
            directory = tempfile.mkdtemp(prefix="bench-gpt2-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)  # children got the path; they end first
            _BUILT[spec] = str(build_bench_model(directory, seed=seed, suppress_eos=spec == "bench"))
        return _BUILT[spec]
    if spec == "tiny":
        return str(BUNDLED_DIR)
    if not Path(spec).is_dir():
        raise SystemExit(f"--model {spec!r}: expected 'bench', 'bench-eos', 'tiny' or a save_pretrained folder")
    return spec


def describe_model(path: str) -> dict[str, Any]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return {"path": path, "model_type": config.model_type, "n_layer": getattr(config, "n_layer", None),
            "n_embd": getattr(config, "n_embd", None), "vocab_size": config.vocab_size}


def bench_task(new_tokens: int):
    """A Task over :data:`PROMPTS` (train and eval), rewarded by :func:`vowel_reward`."""
    from text_envs.tasks import Task, TaskExample

    examples = tuple(TaskExample(p) for p in PROMPTS)
    return Task(name="bench", description="benchmark prompts", train=examples, eval=examples, reward="length",
                reward_kwargs={}, max_new_tokens=new_tokens, source="benchmarks/common.py")


# ------------------------------------------------------------------------------------------- timing
def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and relative spread ((max - min) / median) of ``samples``."""
    median = statistics.median(samples)
    return {"median": median, "min": min(samples), "max": max(samples),
            "spread": (max(samples) - min(samples)) / median if median else float("nan"), "samples": samples}


def timed(fn: Callable[[], float], repeats: int) -> dict[str, Any]:
    """Run ``fn`` (which returns a count of tokens) ``repeats`` times; tokens/s statistics."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        rates.append(tokens / (time.perf_counter() - start))
    return summarize(rates)


def interleaved(fns: dict[str, Callable[[], float]], repeats: int, warmup: bool = True,
                no_warmup: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Time several workloads side by side, interleaving them (A B C, A B C, ...) so that a change in machine
    load hits all of them alike. Each ``fn`` returns the number of tokens it processed. Every workload but
    those named in ``no_warmup`` (long ones, where a first-call cost is negligible) is run once untimed."""
    if warmup:
        for name, fn in fns.items():
            if name not in no_warmup:
                fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    cpu_rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - start))
            cpu_rates[name].append(tokens / max(time.process_time() - cpu_start, 1e-9))
    return {name: {**summarize(values), "cpu_time": summarize(cpu_rates[name])} for name, values in rates.items()}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Ratio of the median wall-clock rates."""
    return round(a["median"] / b["median"], 3)


def cpu_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Ratio of the median CPU-time rates (tokens per CPU-second of this process: robust to other load)."""
    return round(a["cpu_time"]["median"] / b["cpu_time"]["median"], 3)


# ------------------------------------------------------------------------------------------ reports
def environment(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": threads, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]], unit: str = "tokens/s") -> None:
    print(f"\n{title}")
    print(f"| what | {unit} (median) | min | max | spread | per CPU-second |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, stats in rows:
        cpu = f"{stats['cpu_time']['median']:,.0f}" if "cpu_time" in stats else "-"
        print(f"| {name} | {stats['median']:,.0f} | {stats['min']:,.0f} | {stats['max']:,.0f} | "
              f"{stats['spread']:.0%} | {cpu} |")


def write_result(name: str, out_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (which must hold ``ratios``) to ``out_dir/name.json`` and print the ratios last."""
    assert "ratios" in payload, "every result has a top-level 'ratios' object"
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), **payload}
    from text_envs.atomic import write_text_atomic  # here, not at the top: the TRL runner imports this module

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    write_text_atomic(path, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")
    print("ratios: " + json.dumps(payload["ratios"]))
    return path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
