"""Tensor collectives of the memory bank that are the identity in a single process.

When no `torch.distributed` process group is initialised every helper returns its input (or does
nothing), so the same bank code serves a CPU run, one GPU and `torchrun`. Under a process group
every rank must call each collective in the same order, with tensors on a device the backend
supports (gloo: CPU, NCCL: CUDA).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes in the group; 1 in a single process."""
    return dist.get_world_size() if is_distributed() else 1


# The one-tensor all-gather: all_gather_single where torch has it (it deprecates all_gather_into_tensor).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@torch.no_grad()
def all_gather_cat(t: Tensor, equal_sizes: bool = False) -> Tensor:
    """Concatenate ``t`` (n_r, ...) from every rank along dim 0, in rank order.

    Ranks may hold different ``n_r`` (the trailing dimensions must agree); a caller that knows
    every rank holds the same ``n_r`` passes ``equal_sizes=True``, which gathers in one collective
    instead of three and never reads a size back to the host (no synchronisation on CUDA). The
    result (sum_r n_r, ...) is detached: no gradient flows through the gather. In a single process
    it is ``t.detach()``.
    """
    if not is_distributed():
        return t.detach()
    t = t.detach().contiguous()
    if equal_sizes:
        gathered = t.new_empty((world_size() * t.shape[0], *t.shape[1:]))
        _all_gather_single(gathered, t)
        return gathered
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
