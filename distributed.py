"""Process-group setup and collective helpers that are the identity in a single process.

One code path serves a CPU run, a single GPU and ``torchrun``: when no process group is
initialised every helper returns its input (``broadcast_`` and ``barrier`` do nothing), so callers
never branch on the launch mode. :func:`init_distributed_mode` joins the group that ``torchrun``
describes in the environment. Under a process group (gloo on CPU, NCCL on GPUs) tensors must live on
a device the backend supports, and every rank must call each collective in the same order.
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager, redirect_stdout
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import util

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def init_distributed_mode(args: argparse.Namespace) -> torch.device:
    """Join the process group when launched by ``torchrun``; return this process's device.

    Without ``WORLD_SIZE`` in the environment (a plain ``python`` launch) nothing is initialised and
    the device is ``util.pick_device(args.device)``. Under ``torchrun`` (which sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) the process joins an env://
    group: NCCL on ``cuda:LOCAL_RANK`` when ``args.device`` is ``auto`` (and CUDA is available) or
    ``cuda``, gloo on the CPU when it is ``cpu`` or CUDA is unavailable. Sets ``args.world_size``.
    """
    args.world_size = 1
    if "WORLD_SIZE" not in os.environ:
        return util.pick_device(args.device)
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise util.UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun")
    local = int(os.environ["LOCAL_RANK"])
    if args.device not in ("auto", "cpu", "cuda"):
        raise util.UserError(f"--device {args.device}: under torchrun every process uses cuda:LOCAL_RANK; "
                             "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        visible = torch.cuda.device_count()
        if local >= visible:
            raise util.UserError(f"LOCAL_RANK {local} needs a GPU, but this node shows {visible}: "
                                 "--nproc_per_node must not exceed the GPUs per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="env://", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method="env://")
    args.world_size = dist.get_world_size()
    return device


def destroy() -> None:
    """Leave the process group, if one was joined."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 in a single process."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the group; 1 in a single process."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``); 0 in a single process."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the only rank that writes checkpoints and logs."""
    return rank() == 0


@torch.no_grad()
def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate ``t`` (n_r, ...) from every rank along dim 0, in rank order.

    Ranks may hold different ``n_r`` (the trailing dimensions must agree). The result
    (sum_r n_r, ...) is detached: no gradient flows through the gather. In a single process it is
    ``t.detach()``.
    """
    if not is_distributed():
        return t.detach()
    t = t.detach().contiguous()
    local_size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size())]
    dist.all_gather(sizes, local_size)
    counts = [int(size.item()) for size in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts)])


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` in place with rank ``src``'s copy and return it; a no-op in one process."""
    if is_distributed():
        dist.broadcast(t, src)
    return t


@torch.no_grad()
def all_reduce_mean(t: Tensor) -> Tensor:
    """Element-wise mean of the floating tensor ``t`` (any shape) over all ranks, detached.

    In a single process it is ``t.detach()``.
    """
    if not is_distributed():
        return t.detach()
    total = t.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order; ``[obj]`` in one process.

    ``obj`` is plain data and tensors, what ``torch.load(weights_only=True)`` accepts (it travels
    through ``torch.save``).
    """
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj, weights_only=True)
    return gathered


def barrier() -> None:
    """Wait until every rank arrives; a no-op in one process."""
    if is_distributed():
        dist.barrier()


def rank_chunk(t: Tensor) -> Tensor:
    """This rank's contiguous share of ``t`` (world_size * m, ...): rows [rank * m, (rank + 1) * m).

    Concatenating every rank's chunk in rank order (as :func:`all_gather_cat` does) gives ``t``
    back. In a single process it is ``t``.
    """
    if not is_distributed():
        return t
    if t.shape[0] % world_size():
        raise ValueError(f"{t.shape[0]} rows do not split evenly over {world_size()} ranks")
    size = t.shape[0] // world_size()
    return t[rank() * size:(rank() + 1) * size]


@contextmanager
def stdout_on_main_process() -> Iterator[None]:
    """Within the block, ``print`` output of ranks other than 0 is discarded (stderr is kept)."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
        yield


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`DistributedDataParallel` under a process group, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers when it is built and averages the gradients
    over ranks in ``backward``; :func:`unwrap_model` gives the module back for checkpoints.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its state dict has no ``module.`` prefix), else ``model``."""
    return model.module if isinstance(model, DistributedDataParallel) else model
