"""Tests of ``textgen-rl models``, ``textgen-rl rewards`` and ``textgen-rl tasks``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import build_parser, main
from agents.cli.info import format_table
from text_envs import models
from text_envs.models import MODEL_ALIASES, SMOLLM2_INSTALL_COMMAND


def _run_cli(repo_root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    env["TEXT_ENVS_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_models_subprocess_table(repo_root: Path, tmp_path: Path) -> None:
    result = _run_cli(repo_root, tmp_path / "cache", "models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["alias", "available"]
    assert set(lines[1]) <= {"-", " "}
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert set(rows) == set(MODEL_ALIASES)
    assert rows["tiny"] == "yes"
    assert rows["smollm2-135m"] in {"yes", "no"}
    assert not (tmp_path / "cache").exists()  # listing never converts anything


def test_models_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEXT_ENVS_CACHE", str(tmp_path / "cache"))
    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["alias"] for r in records] == list(MODEL_ALIASES)
    for record in records:
        assert set(record) == {"alias", "available", "description", "detail"}
        assert isinstance(record["available"], bool) and record["description"] and record["detail"]
    assert records[0]["available"] is True and records[0]["detail"].endswith("tiny-lm")


def test_models_reports_missing_smollm2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEXT_ENVS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_locate_smollm2_package", lambda: None)
    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("smollm2-135m"))
    assert line.split()[1] == "no" and SMOLLM2_INSTALL_COMMAND in line


def test_help_lists_the_three_commands() -> None:
    help_text = build_parser().format_help()
    for command in ("models", "rewards", "tasks"):
        assert command in help_text


def test_format_table_aligns_columns() -> None:
    table = format_table(["a", "long header"], [["xxxx", 1], ["y", 22]])
    lines = table.splitlines()
    assert lines[0] == "a     long header"
    assert lines[1] == "----  -----------"
    assert lines[2] == "xxxx  1" and lines[3] == "y     22"


def test_rewards_command(capsys: pytest.CaptureFixture[str]) -> None:
    from text_envs.rewards import list_rewards

    rewards = list_rewards()
    assert main(["rewards"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "needs_targets", "description"]
    assert [line.split()[0] for line in lines[2:]] == [reward.name for reward in rewards]
    assert main(["rewards", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == [reward.name for reward in rewards]
    assert all(isinstance(r["needs_targets"], bool) for r in records)


def test_tasks_command(capsys: pytest.CaptureFixture[str]) -> None:
    from text_envs.tasks import list_tasks

    tasks = list_tasks()
    assert tasks
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["name", "train", "eval", "reward", "max_new_tokens"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == [task.name for task in tasks]
    for task in tasks:
        assert rows[task.name][1:3] == [str(len(task.train)), str(len(task.eval))]
    assert main(["tasks", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == [task.name for task in tasks]
    assert all(r["max_new_tokens"] == t.max_new_tokens for r, t in zip(records, tasks))


def test_responders_command(capsys: pytest.CaptureFixture[str]) -> None:
    from text_envs.responders import list_responders

    assert main(["responders", "--json"]) == 0
    names = [record["name"] for record in json.loads(capsys.readouterr().out)]
    assert names == [*list_responders(), "textarena:<GameId>"] and "calculator" in names
    assert main(["responders"]) == 0
    assert "guess-number" in capsys.readouterr().out
