"""``compare(backend="ray")`` / ``textgen-rl compare --backend ray``: the same records as the local backend,
the same resumable folder, retried workers, and every bad option refused before anything runs."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

import agents.compare as cmp
import agents.compare_ray as compare_ray
from text_envs.errors import ConfigError, MissingDependencyError

FAST = {"n_steps": 8, "batch_size": 8}
#: What changes from one sweep to the next of the same runs (timings) or differs by backend (the records'
#: ``resumed``): left out when the two backends' outputs are compared.
TIMING_COLUMNS = ("wall_time_s", "tokens_per_s")


def sweep(model: Path, out: Path, **extra) -> dict:
    return {"tasks": ["sentiment"], "algos": "token-ppo,grpo", "seeds": 2, "timesteps": 64, "out": out,
            "model": str(model), "num_envs": 4, "eval_n": 4, "device": "cpu",
            "hyperparams": {"token-ppo": FAST, "grpo": FAST}, "progress": False, "plot": False,
            "bootstrap_reps": 100, **extra}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def test_bad_backend_options_fail_before_any_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cmp, "run_one", lambda *a, **k: pytest.fail("a run started"))
    out = tmp_path / "cmp"
    cases = [({"backend": "nope"}, "unknown backend 'nope'; known: local, ray"),
             ({"backend": "ray", "workers": 0}, "workers must be a positive int, got 0"),
             ({"backend": "ray", "workers": 1.5}, "workers must be a positive int, got 1.5"),
             ({"backend": "ray", "workers": True}, "workers must be a positive int, got True"),
             ({"backend": "ray", "address": 6379}, "address must be a Ray cluster address"),
             ({"address": "ray://head:10001"}, "options of the ray backend"),
             ({"workers": 2}, "options of the ray backend")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            cmp.compare(algos="grpo", seeds=1, timesteps=8, out=out, progress=False, device="cpu", **options)
        assert not out.exists(), options


def test_ray_backend_without_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'textgen-rl\[ray\]'"):
        cmp.compare(algos="grpo", seeds=1, timesteps=8, out=tmp_path / "cmp", progress=False, device="cpu",
                    backend="ray", workers=2)
    assert not (tmp_path / "cmp").exists()


def test_cli_backend_options(tmp_path, capsys):
    from agents.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--algos", "grpo", "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--address and --workers are options of the ray backend" in err
    assert main(["compare", "--algos", "grpo", "--backend", "nope", "--out", str(out)]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_ray_sweep_matches_the_local_backend_and_resumes(tiny_gpt2_dir, tmp_path):
    pytest.importorskip("ray")
    local = cmp.compare(**sweep(tiny_gpt2_dir, tmp_path / "local"))
    ray_out = tmp_path / "ray"
    remote = cmp.compare(**sweep(tiny_gpt2_dir, ray_out, backend="ray", workers=2))
    assert remote.counts == {"reused": 0, "resumed": 0, "trained": 4}
    # seeded runs with one torch thread each: the same numbers, run by run, in plan order
    assert [(r["algo"], r["seed"]) for r in remote.runs] == [("token-ppo", 0), ("token-ppo", 1), ("grpo", 0),
                                                            ("grpo", 1)]
    for a, b in zip(local.runs, remote.runs):
        assert a["config"] == b["config"]
        assert (a["score_mean"], a["kl_mean"], a["timesteps"]) == (b["score_mean"], b["kl_mean"], b["timesteps"])
        assert a["curve"] == b["curve"]
    assert csv_rows(local.results_csv) == csv_rows(remote.results_csv)
    untimed = [[{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in result.summary]
               for result in (local, remote)]
    assert json.dumps(untimed[0]) == json.dumps(untimed[1])  # NaN == NaN (no normalisable task)
    assert sorted(p.name for p in (ray_out / "runs").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "runs").iterdir())  # records only: no checkpoint folder left
    assert not compare_ray.require_ray().is_initialized()  # the instance this call started is shut down
    # a rerun reuses every run, on either backend (the same cache keys)
    assert cmp.compare(**sweep(tiny_gpt2_dir, ray_out, backend="ray", workers=2)).counts == {
        "reused": 4, "resumed": 0, "trained": 0}
    assert cmp.compare(**sweep(tiny_gpt2_dir, ray_out)).counts == {"reused": 4, "resumed": 0, "trained": 0}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster started the way a user starts one (``ray start --head``), stopped at the end by
    signalling that command only (never ``ray stop``, which would stop every Ray instance of the machine).
    ``RAY_AUTH_MODE=disabled``: since Ray 2.5x ``ray start`` turns token authentication on, and a driver then needs
    the cluster's token (README, Comparing algorithms); what is tested here is joining, not Ray's auth."""
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    pytest.importorskip("ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh")  # short: Ray's Unix socket paths live under it (108-byte limit)
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if head.poll() is not None or time.monotonic() > deadline:
            os.killpg(head.pid, signal.SIGKILL)
            pytest.fail(f"ray start --head exited or did not listen on port {port} within 60 s")
        time.sleep(0.5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of its group still running
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_address_joins_a_running_cluster_and_no_address_starts_its_own(ray_cluster, tiny_gpt2_dir, tmp_path,
                                                                       monkeypatch):
    ray = compare_ray.require_ray()
    small = {"algos": "grpo", "seeds": 1}
    local = cmp.compare(**{**sweep(tiny_gpt2_dir, tmp_path / "local"), **small})
    joined = cmp.compare(**{**sweep(tiny_gpt2_dir, tmp_path / "joined"), **small, "backend": "ray",
                            "address": ray_cluster})
    assert joined.counts == {"reused": 0, "resumed": 0, "trained": 1}
    assert csv_rows(local.results_csv) == csv_rows(joined.results_csv)
    assert not ray.is_initialized()  # the driver disconnected; the cluster itself keeps running
    # with a cluster running and advertised (RAY_ADDRESS, or /tmp/ray's latest cluster), no address still means a
    # new local instance of `workers` CPUs (Ray's own default would join that cluster, where num_cpus is refused)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    own = cmp.compare(**{**sweep(tiny_gpt2_dir, tmp_path / "own"), **small, "backend": "ray", "workers": 1})
    assert csv_rows(local.results_csv) == csv_rows(own.results_csv)


@pytest.mark.slow
def test_a_dead_worker_is_retried_and_resumes_from_its_checkpoint(tiny_gpt2_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    markers = tmp_path / "attempts"
    markers.mkdir()

    def dies_once_after_training(run_kwargs, threads):
        """In the worker: run the real task; on seed 1's first attempt, kill the process before it returns
        (its checkpoint, saved after the first of its two updates, stays in runs/<key>/)."""
        import agents.compare_ray as module  # the worker's own, unpatched module

        record = module._train(run_kwargs, threads)
        marker = markers / f"seed{run_kwargs['seed']}"
        if run_kwargs["seed"] == 1 and not marker.exists():
            marker.write_text(module.__file__)
            os._exit(1)
        return record

    monkeypatch.setattr(compare_ray, "_train", dies_once_after_training)
    # one rollout is 80 tokens here: 128 tokens are two updates, a checkpoint between them
    result = cmp.compare(**sweep(tiny_gpt2_dir, tmp_path / "cmp", algos="grpo", timesteps=128, backend="ray",
                                 workers=2, checkpoint_every=1))
    # the workers import this checkout's code (PYTHONPATH set for them), not another installed copy
    assert Path((markers / "seed1").read_text()) == Path(compare_ray.__file__).resolve()
    assert result.counts == {"reused": 0, "resumed": 1, "trained": 1}
    assert [r["resumed"] for r in result.runs] == [False, True]
    assert all(r["timesteps"] >= 128 and r["curve"][-1]["tokens"] == r["timesteps"] for r in result.runs)
    assert not [p for p in (tmp_path / "cmp" / "runs").iterdir() if p.is_dir()]  # checkpoints removed


@pytest.mark.slow
def test_a_task_that_raises_is_not_retried_and_its_error_surfaces(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def refuses(run_kwargs, threads):
        (attempts / f"{run_kwargs['seed']}-{len(list(attempts.iterdir()))}").touch()
        raise ConfigError(f"seed {run_kwargs['seed']} refused")

    monkeypatch.setattr(compare_ray, "_train", refuses)
    with pytest.raises(ConfigError, match=r"^seed \d refused$"):  # the worker's own error, not Ray's traceback
        cmp.compare(**sweep(Path("unused"), tmp_path / "cmp", algos="grpo", backend="ray", workers=2))
    assert 1 <= len(list(attempts.iterdir())) <= 2  # each task ran once at most (no retry of an exception)
    assert not list((tmp_path / "cmp" / "runs").iterdir()) and not compare_ray.require_ray().is_initialized()


@pytest.mark.slow
def test_workers_import_what_a_run_needs_when_they_start(monkeypatch):
    pytest.importorskip("ray")
    modules = compare_ray.WARM_MODULES

    def imported_before_the_task(run_kwargs, threads):
        import sys

        return {name: name in sys.modules for name in modules}

    monkeypatch.setattr(compare_ray, "_train", imported_before_the_task)
    records = []
    compare_ray.run_jobs([{}], lambda index, record: records.append(record), workers=1)
    assert records == [dict.fromkeys(modules, True)]  # warm_worker ran as the worker process started
