"""Collectives over the torch.distributed process group (a Ray Train worker's), and their no-op
single-process forms: the evaluator's all-reduce of ranking sums and the training loop's figures
(mean loss over ranks, the slowest rank's time, the smallest shard) all go through `all_reduce`.

Outside a process group every function returns its input, so the same code runs in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def in_process_group() -> bool:
    """Whether a torch.distributed process group is initialised (e.g. inside a Ray Train worker)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if in_process_group() else 0


def world_size() -> int:
    return dist.get_world_size() if in_process_group() else 1


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`values` reduced over every rank ("sum", "max" or "min"), as a new CPU tensor.

    NCCL reduces CUDA tensors only, so the tensor travels through the GPU there."""
    if not in_process_group():
        return values.clone()
    packed = values.detach().clone()
    if dist.get_backend() == "nccl":
        packed = packed.cuda()
    dist.all_reduce(packed, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return packed.cpu()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each float over the ranks (one all_reduce for the whole dict)."""
    if not values:
        return values
    total = all_reduce(torch.tensor(list(values.values()), dtype=torch.float64))
    return dict(zip(values, (total / world_size()).tolist(), strict=True))


def max_over_ranks(value: float) -> float:
    """The largest `value` over the ranks (the slowest rank sets an epoch's time; the largest shard
    sets the rows every rank trains). An int stays an int."""
    largest = all_reduce(torch.tensor([value], dtype=torch.float64), "max")[0]
    return int(largest) if isinstance(value, int) else float(largest)


def min_over_ranks(value: int) -> int:
    """The smallest `value` over the ranks (whether some rank has no rows at all)."""
    return int(all_reduce(torch.tensor([value], dtype=torch.int64), "min")[0])
