"""Multi-process data-parallel training on ``torch.distributed``: the glue, in small functions.

Launched by ``torchrun`` (``torchrun --nproc_per_node=N -m agents.cli train ...``), each process (rank)
runs its own batched env and rollouts with its own seed (:func:`rank_seed`); the policy's update goes
through :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on CUDA), which averages
the gradients. What has to be the same on every rank (advantage whitening statistics, the KL statistics
behind the adaptive KL coefficient, loss normalisers, the generated-token count, early stopping) is
reduced with :func:`all_reduce_sum` / :func:`all_reduce_mean` / :func:`all_reduce_max`, so all ranks take
the same step. Rank 0 (:func:`is_main`) alone logs, evaluates and writes files.

Every function is a no-op (or the single-process answer) when no process group is initialised or the
world has one process, so a run without ``torchrun`` behaves exactly as before. See ``docs/distributed.md``.

**Loss normalisation.** A loss that averages over the minibatch's tokens (or sequences) must average
over the *global* minibatch, the union of the ranks' minibatches, for ``W`` ranks x ``B`` sequences to
take the step of one process on the ``W * B`` sequences. With ``S_r`` the sum of the per-token terms on
rank ``r``, ``n_r`` its token count and ``N = sum_r n_r``, the one-process loss is ``sum_r S_r / N``.
Rank ``r`` computes its local mean ``S_r / n_r`` and multiplies it by :func:`loss_scale`
``W * n_r / N``: DDP then averages the gradients, ``(1 / W) sum_r W * grad S_r / N = grad sum_r S_r / N``.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from text_envs.errors import ConfigError

__all__ = ["DistributedContext", "SEED_STRIDE", "SequenceForward", "all_reduce_max", "all_reduce_mean",
           "all_reduce_sum", "barrier", "broadcast_object", "gather_objects", "global_masked_mean", "init_from_env",
           "is_distributed", "is_initialized", "is_main", "local_rank", "loss_scale", "masked_whiten", "rank",
           "rank_device", "rank_seed", "shutdown", "world_size", "wrap_ddp"]

#: Rank ``r`` of a run with seed ``s`` uses seed ``s + r * SEED_STRIDE`` (rank 0 keeps ``s``).
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: its global rank, its rank on its node and the world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that logs, evaluates and writes files)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes of the job (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """Rank of this process on its node (torchrun's ``LOCAL_RANK``; 0 without it)."""
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return rank() == 0


def is_distributed() -> bool:
    """Whether this process is one of several: a process group with more than one rank."""
    return world_size() > 1


def init_from_env(device: Any = "auto", backend: str | None = None) -> DistributedContext:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); without it (or with ``WORLD_SIZE=1``) do nothing.

    Idempotent: an existing process group is kept. On CUDA each rank uses ``cuda:LOCAL_RANK``.

    :param device: the run's device (``"auto"``, ``"cpu"``, ``"cuda"``): picks the backend.
    :param backend: ``"gloo"`` or ``"nccl"``; None: NCCL when the run uses CUDA, gloo otherwise.
    :raises ConfigError: inconsistent torchrun variables, or an unknown backend.
    """
    if is_initialized():
        return DistributedContext(rank(), local_rank(), world_size(), str(dist.get_backend()))
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return DistributedContext()
    global_rank, node_rank = _env_int("RANK", -1), _env_int("LOCAL_RANK", 0)
    if not 0 <= global_rank < size:
        raise ConfigError(f"RANK={os.environ.get('RANK')!r} must be in [0, WORLD_SIZE={size}) (launch with torchrun)")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={size} but {name} is not set (launch with torchrun)")
    from text_envs.devices import resolve_device

    resolved = resolve_device(device)
    if backend is None:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(node_rank)
    dist.init_process_group(backend=backend, init_method="env://", world_size=size, rank=global_rank)
    return DistributedContext(global_rank, node_rank, size, backend)


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, process_rank: int | None = None) -> int:
    """This rank's seed: ``seed + rank * SEED_STRIDE`` (rank 0, and any single process, keep ``seed``)."""
    return int(seed) + (rank() if process_rank is None else int(process_rank)) * SEED_STRIDE


def rank_device(device: Any = "auto") -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when the run is on CUDA without an explicit index and
    several processes share the job; otherwise :func:`text_envs.devices.resolve_device`'s answer."""
    from text_envs.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return resolved


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# --------------------------------------------------------------------------------------- reductions
def _reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """All-reduce ``tensor`` in place (moved to the current CUDA device and back for NCCL); returns it."""
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=op)
        tensor.copy_(moved.to(tensor.device))
        return tensor
    dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over the ranks, in place; returns it (unchanged in a single process)."""
    return _reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks, in place; returns it (unchanged in a single process)."""
    if not is_distributed():
        return tensor
    _reduce(tensor, dist.ReduceOp.SUM)
    return tensor.div_(world_size())


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tensor`` over the ranks, in place; returns it (unchanged in a single process)."""
    return _reduce(tensor, dist.ReduceOp.MAX)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others; ``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the masked positions of every rank: ``(B, T), (B, T) -> ()``
    (:func:`agents.rl_math.masked_mean` in a single process)."""
    from agents.rl_math import masked_mean

    if not is_distributed():
        return masked_mean(values, mask)
    mask = mask.to(values.dtype)
    totals = all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]).detach().double())
    return (totals[0] / totals[1].clamp(min=1)).to(values.dtype)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """:func:`agents.rl_math.masked_whiten` with the mean and variance taken over every rank's masked
    positions (the rollout of all ranks together); exactly ``rl_math.masked_whiten`` in a single process.
    ``(B, T) -> (B, T)``, padding returned as 0."""
    from agents.rl_math import masked_whiten as local_whiten

    if not is_distributed():
        return local_whiten(values, mask, eps=eps)
    mean = global_masked_mean(values, mask)
    var = global_masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask.to(values.dtype)


def loss_scale(local_count: float, global_count: float) -> float:
    """Factor turning a rank's local mean loss into its share of the global mean: ``W * n_r / N``
    (see the module docstring); 0 for a rank without data in this minibatch."""
    return world_size() * float(local_count) / max(float(global_count), 1.0)


# ---------------------------------------------------------------------------------------------- DDP
class SequenceForward(nn.Module):
    """The policy's teacher-forced sequence evaluation as a module ``forward``, for DDP (which only
    synchronises gradients of outputs computed through its own ``forward``).

    :param policy: a :class:`~agents.policy.TransformerPolicy` (anything with ``evaluate_sequences``).
    :param value_grad: False returns the values detached (an update that does not train the value head: DDP
        then sees its parameters as unused in every forward).
    """

    def __init__(self, policy: nn.Module, value_grad: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.value_grad = value_grad

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int,
                action_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``policy.evaluate_sequences(input_ids, attention_mask, num_tokens, action_positions)``: logits
        ``(B, T, V)`` and values ``(B, T)``."""
        logits, values = self.policy.evaluate_sequences(input_ids, attention_mask, num_tokens, action_positions)
        return logits, values if self.value_grad else values.detach()


def wrap_ddp(policy: nn.Module, trains_value_head: bool = True) -> nn.Module:
    """``DistributedDataParallel(SequenceForward(policy))``: construction broadcasts rank 0's weights to
    every rank; gradients of what its forward computes are averaged over the ranks in ``backward``.

    :param policy: the policy (on this rank's device).
    :param trains_value_head: False for an update without a value loss (the critic-free algorithms): the
        values come back detached and DDP looks for the parameters without gradient (the value head).
    :raises ConfigError: without a process group of several ranks.
    """
    if not is_distributed():
        raise ConfigError("wrap_ddp needs a torch.distributed process group of several ranks (launch with torchrun)")
    device = next(policy.parameters()).device
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # the buffers (rotary tables, masks) are constants: no broadcast before every forward
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                      else {"broadcast_buffers": False})  # the name before torch 2.13
    return ddp(SequenceForward(policy, value_grad=trains_value_head), device_ids=device_ids,
               find_unused_parameters=not trains_value_head, **no_buffer_sync)
