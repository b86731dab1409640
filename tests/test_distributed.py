"""Data-parallel training on torch.distributed (gloo, CPU, 2 processes): the same step on every rank, equal
to one process's step on the union of the ranks' sequences; the CLI under torchrun; the glue's no-op mode."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.micro import build_micro_model, micro_env

REPO = Path(__file__).resolve().parent.parent
WORLD = 2
#: Per-rank minibatch size large enough that a rank's rollout is one minibatch (the one-process replica uses
#: WORLD times it: one minibatch of the union, the same sequences whatever the order).
RANK_BATCH = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make(name: str, micro_dir: Path, seed: int, batch_size: int) -> Any:
    """The algorithms compared: KL in the reward and an adaptive KL coefficient, so its reduction matters."""
    from agents import GRPO, Reinforce, TokenPPO, TransformerPolicy

    common = {"policy_kwargs": {"model": str(micro_dir)}, "n_steps": 3, "batch_size": batch_size,
              "learning_rate": 1e-3, "seed": seed, "device": "cpu", "kl_target": 0.01, "kl_horizon": 100}
    env = micro_env(micro_dir, n=8, kl_coef=0.1)
    if name == "token-ppo":
        return TokenPPO(TransformerPolicy, env, n_epochs=2, **common)
    if name == "token-ppo-target-kl":  # early stop on the KL of the global minibatch, on every rank alike
        return TokenPPO(TransformerPolicy, env, n_epochs=4, target_kl=1e-4, **common)
    if name == "reinforce":  # per-sequence loss sum, baseline and advantage std over every rank's returns
        return Reinforce(TransformerPolicy, env, n_epochs=2, normalize_advantages=True, **common)
    loss_type = {"grpo": "grpo", "dr-grpo": "dr_grpo"}[name]
    return GRPO(TransformerPolicy, env, n_epochs=2, group_size=2, loss_type=loss_type, **common)


SCENARIOS = ("token-ppo", "token-ppo-target-kl", "grpo", "dr-grpo", "reinforce")


def _params(algo: Any) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in algo.policy.parameters()])


def _worker(rank: int, port: int, micro_dir: str, out: str) -> None:
    """One rank: for each algorithm, one rollout + update (saved for the parent's comparison), then a few more
    updates with small, uneven minibatches; the ranks' parameters are gathered on rank 0."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(WORLD)})
    torch.set_num_threads(1)
    from stable_baselines3.common.logger import Logger

    from agents import distributed

    context = distributed.init_from_env("cpu")
    assert context.backend == "gloo" and context.world_size == WORLD and context.rank == rank
    try:
        for name in SCENARIOS:
            algo = _make(name, Path(micro_dir), distributed.rank_seed(0), RANK_BATCH)  # own seed: own prompts
            algo.set_logger(Logger(None, []))
            _, callback = algo._setup_learn(10**6, callback=None)  # resets the env, builds DDP (broadcast)
            assert algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, algo.n_steps)
            before = copy.deepcopy(algo.policy.state_dict())
            episodes = copy.deepcopy(algo.rollout_buffer.episodes)
            kl_coef = algo.kl_coef
            algo.train()
            torch.save({"before": before, "episodes": episodes, "kl_coef": kl_coef, "after": _params(algo),
                        "kl_coef_after": algo.kl_coef, "timesteps": algo.num_timesteps},
                       Path(out) / f"{name}-{rank}.pt")
            algo.batch_size = 3  # several minibatches per epoch, not as many on every rank
            algo.learn(3 * 24, reset_num_timesteps=False)  # three more rollouts and updates
            gathered = distributed.gather_objects((_params(algo), algo.kl_coef, algo.num_timesteps))
            if distributed.is_main():
                torch.save(gathered, Path(out) / f"{name}-learned.pt")
            algo.env.close()
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-distributed"), seed=0)


@pytest.fixture(scope="module")
def ranks_output(micro_dir, tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(_free_port(), str(micro_dir), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_ranks_take_the_step_of_one_process_on_both_rollouts(ranks_output, micro_dir, name):
    from stable_baselines3.common.logger import Logger

    ranks = [torch.load(ranks_output / f"{name}-{r}.pt", weights_only=False) for r in range(WORLD)]
    assert torch.equal(ranks[0]["after"], ranks[1]["after"]), "the ranks diverged"
    assert ranks[0]["kl_coef_after"] == ranks[1]["kl_coef_after"]
    prompts = [[tuple(e.prompt_ids) for e in rank["episodes"]] for rank in ranks]
    assert prompts[0] != prompts[1], "both ranks sampled the same prompts"
    single = _make(name, micro_dir, 0, WORLD * RANK_BATCH)
    single.set_logger(Logger(None, []))
    single.policy.load_state_dict(ranks[0]["before"])
    start = _params(single)
    single.kl_coef = single.kl_controller.value = ranks[0]["kl_coef"]
    assert all(rank["kl_coef"] == ranks[0]["kl_coef"] for rank in ranks)
    single.rollout_buffer.episodes = [e for rank in ranks for e in rank["episodes"]]
    steps, step = [], single.optimizer_step
    single.optimizer_step = lambda loss: steps.append(1) or step(loss)
    single.train()
    assert len(steps) < single.n_epochs if name == "token-ppo-target-kl" else len(steps) == single.n_epochs
    torch.testing.assert_close(_params(single), ranks[0]["after"], rtol=1e-4, atol=2e-6)
    assert single.kl_coef == pytest.approx(ranks[0]["kl_coef_after"], rel=1e-9)
    assert not torch.allclose(start, ranks[0]["after"]), "the update changed nothing"
    single.env.close()


@pytest.mark.parametrize("name", SCENARIOS)
def test_parameters_stay_identical_on_every_rank(ranks_output, name):
    gathered = torch.load(ranks_output / f"{name}-learned.pt", weights_only=False)
    (params0, coef0, steps0), (params1, coef1, steps1) = gathered
    assert torch.equal(params0, params1)
    assert coef0 == coef1 and steps0 == steps1


def test_glue_is_a_no_op_in_one_process():
    from agents import distributed
    from agents.rl_math import masked_mean, masked_whiten

    assert not distributed.is_initialized() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.init_from_env("cpu").world_size == 1  # no torchrun variables: nothing happens
    values, mask = torch.randn(3, 5), (torch.rand(3, 5) > 0.3).float()
    tensor = values.clone()
    assert distributed.all_reduce_sum(tensor) is tensor and torch.equal(tensor, values)
    assert torch.equal(distributed.all_reduce_mean(values.clone()), values)
    assert torch.equal(distributed.masked_whiten(values, mask), masked_whiten(values, mask))
    assert torch.equal(distributed.global_masked_mean(values, mask), masked_mean(values, mask))
    assert distributed.rank_seed(5) == 5 and distributed.rank_seed(5, 1) == 5 + distributed.SEED_STRIDE
    assert distributed.loss_scale(3, 3) == 1.0
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.gather_objects(2) == [2]
    distributed.barrier()


def test_bad_torchrun_variables_are_config_errors(monkeypatch):
    from agents import distributed
    from text_envs.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        distributed.init_from_env("cpu")


@pytest.mark.slow
def test_torchrun_cli_trains_on_two_ranks(tmp_path, tiny_gpt2_dir):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--nproc_per_node=2", "--master_port", str(_free_port()), "-m", "agents.cli", "train",
               "--model", str(tiny_gpt2_dir), "--timesteps", "192", "--num-envs", "4", "--eval-n", "4",
               "--max-new-tokens", "6", "--checkpoint-every", "1", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["world_size"] == 2 and summary["timesteps"] >= 192
    assert result.stdout.count("after training") == 1, "only rank 0 prints"
    assert len(list(out.glob("events.out.tfevents.*"))) == 1, "only rank 0 logs"
    rows = (out / "progress.csv").read_text().splitlines()
    assert len(rows) >= 2 and "objective/score" in rows[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "nothing written outside the run folder"
    assert not (out / "checkpoint").exists()


def test_torchrun_rejects_algorithms_without_data_parallel_support(tmp_path):
    from agents.training import check_distributed_algo
    from text_envs.errors import ConfigError

    for name in ("ppo", "a2c", "maskable-ppo", "dapo"):
        with pytest.raises(ConfigError, match=name):
            check_distributed_algo(name)
    for name in ("token-ppo", "grpo", "dr-grpo", "rloo", "reinforce"):
        check_distributed_algo(name)


def _fingerprint(run: Path) -> dict:
    from scripts.kill_resume_trials import run_fingerprint

    return run_fingerprint(run)


def _torchrun(*args: str) -> list[str]:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--nproc_per_node=2", "--master_port", str(_free_port()), "-m", "agents.cli", *args]


def _environment(pause: bool = False) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("TEXTGEN_RL_SAVE_PAUSE_S", None)
    if pause:
        env["TEXTGEN_RL_SAVE_PAUSE_S"] = "0.5"
    return env


@pytest.mark.slow
def test_killed_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_gpt2_dir):
    psutil = pytest.importorskip("psutil")
    from scripts.kill_resume_trials import saving

    train = ["train", "--model", str(tiny_gpt2_dir), "--timesteps", "2048", "--num-envs", "4", "--eval-n", "4",
             "--max-new-tokens", "6", "--checkpoint-every", "1", "--device", "cpu"]
    reference = subprocess.run(_torchrun(*train, "--out", str(tmp_path / "reference")), capture_output=True,
                               text=True, env=_environment(), timeout=300, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    folder = tmp_path / "killed"
    process = subprocess.Popen(_torchrun(*train, "--out", str(folder)), env=_environment(pause=True), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    condition, killed = saving(folder, "checkpoint"), False
    try:
        process.wait(timeout=0.01)
    except subprocess.TimeoutExpired:
        import time

        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline and not killed:
            if condition():  # a second checkpoint is replacing the first: kill both ranks and torchrun
                for worker in psutil.Process(process.pid).children(recursive=True):  # own sessions (torchrun's)
                    worker.kill()
                process.kill()
                killed = True
            time.sleep(0.01)
    process.wait()
    assert killed, f"the run ended before the kill (exit code {process.returncode})"
    assert (folder / "checkpoint" / "state.pt").is_file()
    resumed = subprocess.run(_torchrun("train", "--resume", str(folder)), capture_output=True, text=True,
                             env=_environment(), timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint" in resumed.stdout
    expected, result = _fingerprint(tmp_path / "reference"), _fingerprint(folder)
    for key in ("weights", "progress", "timesteps", "after", "before"):
        assert result[key] == expected[key], key
    assert json.loads((folder / "eval.json").read_text())["world_size"] == 2
