"""The Ray backend of :func:`agents.compare.compare` (``textgen-rl compare --backend ray``).

Every run of the sweep that is not cached already becomes a Ray task (one CPU, one torch thread) that calls
:func:`agents.compare.run_one` with ``run_dir=runs/<key>``: a worker that dies is retried by Ray
(:data:`MAX_RETRIES` times) and the retry continues from the run's last checkpoint. The driver writes each
``runs/<key>.json`` as its result arrives and removes the checkpoint, exactly as the local backend does, so
a killed driver, rerun, reuses the finished runs and resumes the others (on either backend).

Without an address a local Ray instance with ``workers`` CPUs is started (and shut down at the end); with
one, the driver joins that cluster (``ray.init(address=...)``), whose nodes must have this package installed.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from text_envs.errors import ConfigError, MissingDependencyError

__all__ = ["BACKENDS", "MAX_RETRIES", "WARM_MODULES", "WORKER_THREADS", "check_backend", "require_ray", "run_jobs",
           "warm_worker"]

#: Values of :func:`agents.compare.compare`'s ``backend``.
BACKENDS: tuple[str, ...] = ("local", "ray")
#: Times Ray reruns a task whose worker process died (a task that raises is not rerun).
MAX_RETRIES = 3
#: Torch threads of each Ray task (one task per CPU).
WORKER_THREADS = 1
#: What :func:`warm_worker` imports: everything :func:`agents.compare.run_one` imports.
WARM_MODULES: tuple[str, ...] = ("agents.compare", "agents.algos", "agents.checkpoint", "agents.evaluation",
                                 "text_envs.chat_env", "text_envs.vector_env")


def require_ray() -> Any:
    """Import and return :mod:`ray`.

    :raises MissingDependencyError: Ray is not installed (the message names the extra that installs it).
    """
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("the ray backend needs Ray: pip install 'textgen-rl[ray]'") from None
    return ray


def check_backend(backend: str, workers: int | None, address: str | None, device: str) -> int | None:
    """Validate :func:`agents.compare.compare`'s backend options; return the number of parallel runs.

    :param backend: one of :data:`BACKENDS`.
    :param workers: parallel runs of the ray backend (None: the CPUs of this machine, or, on a cluster,
        as many as the cluster schedules).
    :param address: a Ray cluster to join (ray backend only).
    :param device: the sweep's device (already resolved: ``"cpu"``, ``"cuda"``...).
    :return: the number of parallel runs (None: unbounded, on a cluster; 1 for the local backend).
    :raises ConfigError: unknown backend, ``workers`` not a positive int, ``address`` not a non-empty string,
        ``workers``/``address`` with the local backend, a ray sweep on a device other than the CPU.
    :raises MissingDependencyError: the ray backend without Ray installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"address must be a Ray cluster address (a non-empty string), got {address!r}")
    if backend == "local":
        if workers is not None or address is not None:
            raise ConfigError("workers and address are options of the ray backend (backend='ray')")
        return 1
    if device != "cpu":
        raise ConfigError(f"the ray backend runs every run on one CPU of a worker: device must be 'cpu', "
                          f"got {device!r}")
    require_ray()
    if workers is None and address is None:
        return os.cpu_count() or 1
    return workers


def _train(run_kwargs: dict[str, Any], threads: int) -> dict[str, Any]:
    """The body of a Ray task: one run (:func:`agents.compare.run_one`) with ``threads`` torch threads."""
    from agents.compare import run_one
    from text_envs.models import configure_threads

    configure_threads(threads)
    return run_one(**run_kwargs)


def warm_worker() -> None:
    """Ray's ``worker_process_setup_hook``: import what a run needs (torch, transformers, SB3, the envs and
    algorithms) when the worker process starts, while the driver is still starting the instance and submitting
    the tasks, instead of at the start of its first task (``benchmarks/compare_parallel.py``: the sweep's fixed
    cost fell from ~13 s to ~10 s on 2 cores)."""
    for name in WARM_MODULES:
        importlib.import_module(name)


def _worker_env(threads: int, local: bool) -> dict[str, str]:
    """Environment variables of the workers: thread counts and, on a local instance, this checkout's path
    first on ``PYTHONPATH`` (the workers import the code the driver runs, not another installed copy)."""
    env = {name: str(threads) for name in ("TEXTGEN_RL_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if local:
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return env


def _connect(ray: Any, workers: int | None, address: str | None, threads: int) -> bool:
    """Start a local Ray instance (no address) or join a cluster; False when Ray was already initialised in
    this process (that instance is used and left running). True: this call started or joined it."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                               "runtime_env": {"env_vars": _worker_env(threads, local=address is None),
                                               "worker_process_setup_hook": f"{__name__}.{warm_worker.__name__}"}}
    if address is None:
        # Ray nices its workers (15) below its own daemons; here they do all of the sweep's work: run them at the
        # local backend's priority, not below every other process of the machine. address="local": a new
        # instance even when a cluster runs on this machine (ray.init() with no address would join that one)
        ray.init(address="local", num_cpus=workers, _system_config={"worker_niceness": 0}, **options)
    else:
        ray.init(address=address, **options)
    return True


def _result(ray: Any, ref: Any) -> dict[str, Any]:
    """The record of a finished task; a task that raised re-raises its own exception (not Ray's wrapper, whose
    message is the remote traceback), chained to Ray's error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from error
        raise


def run_jobs(jobs: Sequence[dict[str, Any]], on_result: Callable[[int, dict[str, Any]], None],
             workers: int | None = None, address: str | None = None, threads: int = WORKER_THREADS,
             max_retries: int = MAX_RETRIES) -> None:
    """Run every job as a Ray task, at most ``workers`` at a time, and hand each result to ``on_result`` as it
    arrives (completion order).

    :param jobs: keyword arguments of :func:`agents.compare.run_one`, one dict per run (``run_dir`` included:
        a retried task resumes from the checkpoint its dead predecessor left there).
    :param on_result: called in this process with the job's index in ``jobs`` and its record.
    :param workers: runs in flight at a time (the local instance's CPUs); None: all, on a cluster.
    :param address: the Ray cluster to join; None: start a local instance with ``workers`` CPUs.
    :param threads: torch threads of each task.
    :param max_retries: reruns of a task whose worker died.
    :raises MissingDependencyError: Ray is not installed.
    :raises Exception: the error of the first task that raised (e.g. a ConfigError), re-raised here; a task
        whose worker died more than ``max_retries`` times raises Ray's error. The tasks still in flight are
        then cancelled (their checkpoints stay, for a rerun).
    """
    ray = require_ray()
    if not jobs:
        return
    started = _connect(ray, workers, address, threads)
    try:
        task = ray.remote(_train).options(num_cpus=1, max_retries=max_retries, retry_exceptions=False)
        limit = len(jobs) if workers is None else workers
        waiting = list(enumerate(jobs))
        in_flight: dict[Any, int] = {}
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < limit:
                    index, job = waiting.pop(0)
                    in_flight[task.remote(job, threads)] = index
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    on_result(in_flight.pop(ref), _result(ray, ref))
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()
