"""scripts/check_readme_numbers.py: the README's main-job table, exact on its own machine, within the scores'
errors on another."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_readme_numbers.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("check_readme_numbers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(before: float, after: float, se: float = 0.05) -> dict:
    def side(score: float) -> dict:
        return {"score_mean": score, "score_se": se, "kl_mean": 0.5, "distinct_2": 0.95, "n": 64,
                "samples": [{"prompt": "The sky", "score": score, "text": "is blue."}]}
    return {"seed": 0, "timesteps": 4800, "before": side(before), "after": side(after)}


TABLE = summary(0.03, 0.20)
HERE, ELSEWHERE = "CPU A (x86_64, torch CPU capability AVX512, CPU flags 0000abcd)", "CPU B (x86_64, AVX2)"


def test_the_block_names_its_machine_and_its_scores_parse_back(script):
    block = script.render(summary(-0.125, 0.25, se=0.04), HERE)
    assert script.table_machine(block) == HERE
    assert script.table_scores(block) == (-0.125, 0.04, 0.25, 0.04)
    assert "\N{MINUS SIGN}0.125" in block  # the README's typography, parsed back above


def test_this_machine_is_described_by_torch_capability_and_a_flags_hash(script):
    described = script.machine()
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in described
    assert described == script.machine()


@pytest.mark.parametrize("run, machine, code", [
    (TABLE, HERE, 0),                     # the same figures
    (summary(0.03, 0.21), HERE, 1),       # same machine, other figures: the code or the versions changed them
    (summary(0.05, 0.27), ELSEWHERE, 0),  # other machine, within the errors, still learning
    (summary(0.03, 0.06), ELSEWHERE, 1),  # other machine, within the errors, but no longer learning
    (summary(0.03, 0.75), ELSEWHERE, 1),  # other machine, far from the table
    (summary(-0.30, 0.20), ELSEWHERE, 1),  # other machine, the untrained model far from the table's
])
def test_exact_on_the_tables_machine_and_within_error_elsewhere(script, run, machine, code, capsys):
    current = script.render(TABLE, HERE)
    assert script.check(current, script.render(run, machine), run, machine) == code
    out = capsys.readouterr().out
    if run is not TABLE:
        assert "differs from the run" in out and ("passed" if code == 0 else ("FAILED" if machine != HERE
                                                                                else "same machine")) in out


def test_a_table_without_a_machine_line_is_checked_within_error(script):
    current = "\n".join(line for line in script.render(TABLE, HERE).splitlines()
                        if not line.startswith(script.MACHINE_PREFIX))
    assert script.table_machine(current) is None
    assert script.check(current, script.render(summary(0.04, 0.22), HERE), summary(0.04, 0.22), HERE) == 0
