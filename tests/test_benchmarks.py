"""Smoke tests of the benchmark scripts at their smallest size, so that they never rot (timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SMALL = ["--threads", "1", "--repeats", "1", "--batch", "2", "--new-tokens", "4"]


def run_benchmark(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<name>`` with ``args`` offline; fail with its stderr's tail if it exits non-zero."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, cwd=str(REPO_ROOT), timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def run_script(name: str, tmp_path, *extra: str) -> dict:
    proc = run_benchmark(name, *SMALL, "--out", str(tmp_path), *extra, timeout=300)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ratios: "), last
    result = json.loads((tmp_path / name.replace(".py", ".json")).read_text())
    assert json.loads(last[len("ratios: "):]) == result["ratios"]
    return result


@pytest.mark.slow
def test_rollout_benchmark(tmp_path):
    result = run_script("rollout.py", tmp_path)
    assert set(result["ratios"]) >= {"tokenppo_vs_ceiling", "sb3ppo_vs_ceiling", "tokenppo_vs_naive"}
    assert all(v > 0 for v in result["ratios"].values())


@pytest.mark.slow
def test_rollout_benchmark_multi_turn(tmp_path):
    proc = run_benchmark("rollout.py", "--threads", "1", "--repeats", "1", "--batch", "2", "--new-tokens", "8",
                         "--turns", "4", "--out", str(tmp_path), timeout=300)
    result = json.loads((tmp_path / "rollout_dialogue.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] == "ratios: " + json.dumps(result["ratios"])
    assert result["ratios"]["tokenppo_dialogue_vs_ceiling"] > 0 and result["config"]["turns"] == 4


@pytest.mark.slow
def test_update_benchmark(tmp_path):
    result = run_script("update.py", tmp_path, "--minibatch", "1", "--epochs", "1")
    assert set(result["ratios"]) == {"tokenppo_vs_ceiling", "tokenppo_vs_sb3ppo"}
    assert all(v > 0 for v in result["ratios"].values())


@pytest.mark.slow
def test_vs_trl_benchmark_our_side(tmp_path):
    """Our side only: TokenPPO with its deferred KL penalty, GRPO/RLOO with the sparse one (one run)."""
    result = run_script("vs_trl.py", tmp_path, "--skip-trl", "--updates", "1", "--group-size", "2",
                        "--algos", "ppo,grpo,rloo", "--rounds", "2")
    assert set(result["ratios"]) == {"tokenppo_vs_trl_ppo", "grpo_vs_trl_grpo", "rloo_vs_trl_rloo"}
    repeats = result["config"]["repeats"]
    for key in ("ppo/ours", "grpo/ours", "rloo/ours"):  # every round's samples, from 2 processes each
        assert len(result["results"][key]["samples"]) == 2 * repeats
    for key, penalty in (("ppo/ours", "deferred"), ("grpo/ours", "sparse"), ("rloo/ours", "sparse")):
        assert result["results"][key]["median"] > 0 and result["results"][key]["peak_rss_mib"] > 0
        assert result["results"][key]["kl_penalty"] == penalty


@pytest.mark.slow
def test_memory_benchmark(tmp_path):
    result = run_script("memory.py", tmp_path, "--minibatch", "1")
    assert result["ratios"]["peak_over_param_bytes"] > 0
    assert result["lm_copies"] == 2  # policy (with the shared value trunk) and the env's reference


@pytest.mark.slow
def test_scaling_benchmark_quick(tmp_path):
    """One tiny point per axis: every workload measured, ratios to the ceilings, the fitted exponent and the plot."""
    proc = run_benchmark("scaling.py", "--quick", "--threads", "1", "--repeats", "1", "--out", str(tmp_path))
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] == "ratios: " + json.dumps(result["ratios"])
    assert [p["x"] for p in result["sweeps"]["tokens"]] == [4, 8] and result["sweeps"]["model"][0]["x"] == "tiny"
    for points in result["sweeps"].values():
        for point in points:
            assert set(point["ratios"]) == {"tokenppo_rollout", "grpo_rollout", "tokenppo_update", "grpo_update"}
            assert all(r["wall"] > 0 and r["cpu"] > 0 for r in point["ratios"].values())
    assert set(result["exponents"]["TokenPPO rollout"]) == {"time_exponent", "per_token_exponent"}
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


@pytest.mark.slow
def test_fixes_benchmark(tmp_path):
    result = run_script("fixes.py", tmp_path, "--long-tokens", "8", "--short-tokens", "4",
                        "--batch", "4")  # GRPO: groups of 4
    assert set(result["ratios"]) == {"kv_cache_after_vs_before", "critic_free_entropy_after_vs_before",
                                     "update_after_vs_before"}
    assert all(v > 0 for v in result["ratios"].values())


@pytest.mark.parametrize("script", ["rollout.py", "update.py", "vs_trl.py", "memory.py", "scaling.py", "fixes.py"])
def test_help(script):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, cwd=str(REPO_ROOT), timeout=120)
    assert proc.returncode == 0 and "--threads" in proc.stdout and "--repeats" in proc.stdout


@pytest.mark.slow
def test_soak_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "soak.py"), "--minutes", "0.1",
                           "--num-envs", "4", "--sample-seconds", "1", "--json", str(tmp_path / "soak.json")],
                          capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["steps"] > 0 and result["rejected_calls"] > 0 and len(result["samples"]) >= 3
    assert "growth after warm-up" in proc.stdout


@pytest.mark.slow
def test_gpu_check_at_toy_size(tmp_path):
    """The GPU script runs end to end on a CPU at toy size (on a GPU machine it runs full size)."""
    run_benchmark("gpu_check.py", "--toy", "--out", str(tmp_path))
    result = json.loads((tmp_path / "gpu_check_toy.json").read_text())
    assert {(r["algo"], r["mode"]) for r in result["rows"]} == {(a, m) for a in ("token-ppo", "grpo")
                                                               for m in ("full", "lora")}
    for row in result["rows"]:
        assert row["rollout_vs_generate"] > 0 and row["update_vs_plain"] > 0
        assert row["logprob_abs_diff_bf16_fp32_mean"] < 0.1


@pytest.mark.slow
def test_flops_benchmark_at_toy_size(tmp_path):
    run_benchmark("flops.py", "--model", "tiny", "--batch", "4", "--new-tokens", "4", "--out", str(tmp_path))
    result = json.loads((tmp_path / "flops.json").read_text())
    assert result["matmul_flops"] > 1e8 and set(result["results"]) == {"full", "lora"}
    assert all(0 < v for v in result["ratios"].values())


@pytest.mark.slow
def test_distributed_benchmark_at_toy_size(tmp_path):
    """2 gloo ranks under torchrun vs 1 process, end to end, at the smallest size (the ratio is not asserted)."""
    proc = run_benchmark("distributed.py", "--toy", "--out", str(tmp_path))
    result = json.loads((tmp_path / "distributed_toy.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] == "ratios: " + json.dumps(result["ratios"])
    assert result["ratios"]["2_ranks_vs_1"] > 0 and result["targets"]["2_ranks_vs_1"] == 1.7
