"""Data parallel over the processes `accelerate launch` (or torchrun) starts: NCCL on GPUs, gloo on CPUs.

Every process holds the whole model and draws the same batch indices from the same seeded generator, then keeps its
share of the rows (`shard`). Losses are local sums divided by the *global* count (`sum_over_processes`, one scalar
all-reduce), and gradients are summed over processes (`sum_gradients`), so each update equals the one a single process
makes on the whole batch, up to the order of float additions. Only the main process evaluates and writes files.

Written by hand rather than DDP-wrapping the model: ATU's unlearning forward stops at the hook layer (a hook raises
to skip the blocks above), which DDP's unused-parameter bookkeeping does not allow without find_unused_parameters and
an extra pass; summing the gradients of the parameters a stage trains is one bucketed all-reduce per step.

FSDP (`accelerate launch --config_file src/atu/config/accelerate/fsdp.yaml`), for models that do not fit one GPU: the
decoder blocks are sharded with torch's FSDP2 `fully_shard` (each process keeps 1/N of every block's weights, gradients
and optimizer state; a block's weights are gathered only for its forward and backward), with reduce-scatter set to a
plain sum so that the updates stay those of one process. The rest (embeddings, final norm, LM head: the parts a
hook-layer forward may skip) stays replicated and is summed as above. Sharded tensors are gathered for checkpoints and
the saved model, one at a time; generation runs in lockstep (`synced_gpus`).
"""

from __future__ import annotations

import functools
import os

import torch
from accelerate import PartialState
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


@functools.cache
def state(cpu: bool = False):
    """accelerate's process state; sets up the process group when launched with several processes."""
    return PartialState(cpu=cpu or not torch.cuda.is_available())


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This process's share of a batch every process drew identically."""
    return rows[rank() :: world_size()] if world_size() > 1 else rows


def sum_over_processes(local: torch.Tensor) -> torch.Tensor:
    """The sum of `local` over processes, e.g. the denominator of a mean over the whole batch."""
    if world_size() == 1:
        return local
    total = local.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the replicated parameters' gradients over processes (FSDP has already reduce-scattered the sharded ones)."""
    grads = [p.grad for p in params if p.grad is not None and not _sharded(p.grad)]
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


# ------------------------------------------------------------------ FSDP


def fsdp_requested() -> bool:
    """Launched by accelerate with an FSDP config (ours or the user's), with more than one process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes") and world_size() > 1


def shard_blocks(blocks, device: torch.device) -> None:
    """FSDP2 over the decoder blocks (see the module docstring). Moves the blocks' shards to `device`."""
    mesh = init_device_mesh(device.type, (world_size(),))
    offload = CPUOffloadPolicy() if os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true" else OffloadPolicy()
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
        block.set_gradient_divide_factor(1.0)  # a sum, as sum_gradients does: losses divide by the global count
        block.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no pre-multiplied sum)


def is_sharded(model) -> bool:
    """Whether FSDP shards some of `model`'s weights: then every process must run each forward (generate with
    synced_gpus=True, so that no process stops decoding while another still needs its shards)."""
    return any(_sharded(p) for p in model.parameters())


def _sharded(t) -> bool:
    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU: gathered from every process when FSDP shards it (every process must call this)."""
    return (t.full_tensor() if _sharded(t) else t).detach().cpu()


def gathered(obj):
    """`obj` (nested dicts/lists of tensors, e.g. an optimizer state) with every sharded tensor gathered whole."""
    if isinstance(obj, dict):
        return {k: gathered(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gathered(v) for v in obj)
    return full(obj) if _sharded(obj) else obj


def place_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `like` is: this process's shard when `like` is sharded, else on its device."""
    if not _sharded(like):
        return value.to(like.device)
    return distribute_tensor(value.to(like.device_mesh.device_type), like.device_mesh, like.placements)


def optimizer_state_like(state: dict, optimizer) -> dict:
    """A gathered optimizer state_dict, with the per-parameter tensors laid out like the optimizer's parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = {**state, "state": {}}
    for index, entries in state["state"].items():
        p = params[int(index)]
        out["state"][index] = {
            k: place_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in entries.items()
        }
    return out


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """torch's clip_grad_norm_, also when some gradients are FSDP shards (the norm is then over the whole tensors)."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if _sharded(g)]
    if not sharded:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    plain = [g for g in grads if not _sharded(g)]
    squared = float(torch.nn.utils.get_total_norm(sharded).full_tensor()) ** 2
    squared += float(torch.nn.utils.get_total_norm(plain)) ** 2 if plain else 0.0
    coef = max_norm / (squared**0.5 + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
