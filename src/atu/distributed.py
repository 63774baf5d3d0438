"""Data parallel over the processes `accelerate launch` (or torchrun) starts: NCCL on GPUs, gloo on CPUs.

Every process holds the whole model and draws the same batch indices from the same seeded generator, then keeps its
share of the rows (`shard`). Losses are local sums divided by the *global* count (`sum_over_processes`, one scalar
all-reduce), and gradients are summed over processes (`sum_gradients`), so each update equals the one a single process
makes on the whole batch, up to the order of float additions. Only the main process evaluates and writes files.

Hand-written rather than DDP-wrapping the model: ATU's unlearning forward stops at the hook layer (a forward hook raises
to skip the blocks above), which DDP's unused-parameter bookkeeping does not allow without find_unused_parameters and
an extra pass; summing the gradients of the parameters a stage trains is one bucketed all-reduce per step.
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def state(cpu: bool = False):
    """accelerate's process state; sets up the process group when launched with several processes."""
    from accelerate import PartialState

    return PartialState(cpu=cpu or not torch.cuda.is_available())


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This process's share of a batch every process drew identically."""
    return rows[rank()::world_size()] if world_size() > 1 else rows


def sum_over_processes(local: torch.Tensor) -> torch.Tensor:
    """The sum of `local` over processes, e.g. the denominator of a mean over the whole batch."""
    if world_size() == 1:
        return local
    total = local.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if world_size() == 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)  # one all-reduce for all of them
    torch.distributed.all_reduce(flat)
    for grad, summed in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(summed)


def sum_numbers(numbers: dict) -> dict:
    """Logged losses are local shares of global means: their sum over processes is the whole batch's value."""
    if world_size() == 1 or not numbers:
        return numbers
    values = torch.tensor([float(v) for v in numbers.values()], dtype=torch.float64, device=state().device)
    torch.distributed.all_reduce(values)
    return dict(zip(numbers, values.tolist()))


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()
