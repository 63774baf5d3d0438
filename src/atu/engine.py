"""The one training loop. A method hands it stages; each stage names its parameters, optimizer, loss and step count.
The engine freezes everything else, steps, clips, logs, stops on a non-finite loss, and calls back after stages that
ask for an evaluation. It knows no method by name."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .checkpoint import set_rng_state
from .console import progress
from .distributed import clip_gradients, optimizer_state_like, sum_gradients, sum_numbers, sum_over_processes
from .errors import AtuError


@dataclass
class Stage:
    name: str  # unique within a run: "align", "unlearn1", "realign1", ...
    kind: str  # what it does: "align" or "unlearn" (reports group by it)
    steps: int
    params: Callable[[], list[nn.Parameter]]
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    loss: Callable[[int], tuple[torch.Tensor, dict]]  # step -> (loss, numbers to log); the method draws its own batch
    setup: Optional[Callable[[], dict]] = None  # runs before the first step; what it returns is logged
    grad_clip: Optional[float] = 1.0
    evaluate: bool = False
    train: list[nn.Module] = field(default_factory=list)  # modules in train mode (dropout) during this stage
    # SAM: the step's gradient is taken at the weights moved sam_rho uphill; loss(step) must then give the same batch
    # when called twice for one step
    sam_rho: float = 0.0


def _checkpointing(module: nn.Module) -> bool:
    """Whether a transformers model has activation checkpointing on (the attribute was renamed in transformers 5)."""
    module = module.get_base_model() if hasattr(module, "get_base_model") else module  # a peft wrapper: its model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(module), name):
            return bool(getattr(module, name))
    return False


@torch.no_grad()
def _move_uphill(params: list[nn.Parameter], rho: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """SAM's ascent (Foret et al. 2021, arXiv 2010.01412): w += rho g / ||g|| over all parameters together; returns
    the moves to undo. Written here because torch has no SAM, and it is six lines around the engine's step."""
    grads = [(p, p.grad) for p in params if p.grad is not None]
    if not grads:
        return []
    scale = rho / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in grads])).clamp_min(
        1e-12
    )
    moved = [(p, g * scale) for p, g in grads]
    for p, move in moved:
        p.add_(move)
    return moved


@dataclass
class Resume:
    """Where a checkpoint left off: continue stage `stage` at `step` (0: the stage had not started)."""

    stage: int
    step: int
    info: dict  # what the stage's setup returned when it first ran (mid-stage only)
    optimizer: Optional[dict]  # the stage optimizer's state_dict (mid-stage only)
    rng: dict


# Called with (position, optimizer or None, ids of every parameter trained so far) whenever a checkpoint is due.
Checkpoint = Callable[[dict, Optional[torch.optim.Optimizer], set], None]


def run_stages(
    stages: list[Stage],
    modules: list[nn.Module],
    on_stage_end: Callable[[Stage, dict], None],
    log: Callable[[dict], None],
    checkpoint: Optional[Checkpoint] = None,
    every: int = 0,
    resume: Optional[Resume] = None,
    autocast: Callable = contextlib.nullcontext,
    log_every: int = 10,
    evaluate_every: int = 0,
    on_point: Optional[Callable[[Stage, int, dict], None]] = None,
) -> None:
    """Run `stages` in order. `modules` are everything that could train; only a stage's own params get gradients.

    A checkpoint is due after every stage (after its evaluation) and every `every` steps inside a stage. With
    `resume`, stages before resume.stage are skipped (their effect is in the restored parameters and method state);
    a stage resumed mid-way re-runs its setup for its side effects but keeps the logged info of its first start.
    With `evaluate_every`, a stage that evaluates also calls `on_point(stage, steps_done, info)` every that many steps
    inside it (points along a trade-off front), before that step's checkpoint, so a resumed run repeats no point."""
    everything = [p for m in modules for p in m.parameters()]
    trained: set[int] = set()  # what a checkpoint must keep: parameters no stage trained equal the loaded model's
    offsets = [sum(s.steps for s in stages[:i]) for i in range(len(stages))]  # global step of each stage's first step
    for index, stage in enumerate(stages):
        if resume is not None and index < resume.stage:
            trained |= {id(p) for p in stage.params()}
            continue
        mid_stage = resume is not None and index == resume.stage and resume.step > 0
        if resume is not None and index == resume.stage and not mid_stage:
            set_rng_state(resume.rng)
        setup_started = time.time()
        info = stage.setup() if stage.setup else {}
        setup_seconds = round(time.time() - setup_started, 2)  # apart: ATU's caching forward is not in `seconds`
        steps = 0 if info.get("skipped") else stage.steps  # a method may skip the stages it no longer needs
        params = stage.params()
        trained |= {id(p) for p in params}
        chosen = {id(p) for p in params}
        for p in everything:
            p.requires_grad_(id(p) in chosen)
        for m in modules:
            m.eval()
        for m in stage.train:
            m.train()
        for m in modules:  # transformers checkpoints activations only in training mode (shipped LMs have no dropout)
            if _checkpointing(m) and any(id(p) in chosen for p in m.parameters()):
                m.train()
        optimizer = stage.optimizer(params) if steps > 0 else None
        first = 0
        if mid_stage:
            info, first = resume.info, resume.step
            optimizer.load_state_dict(optimizer_state_like(resume.optimizer, optimizer))
            set_rng_state(resume.rng)
        else:
            log(
                {
                    "event": "stage_start",
                    "stage": stage.name,
                    "kind": stage.kind,
                    "index": index,
                    "steps": steps,
                    **info,
                    **({"setup_seconds": setup_seconds} if stage.setup else {}),
                }
            )
        started, last = time.time(), {}
        bar = progress(steps, stage.name, initial=first)
        for step in range(first, steps):
            with autocast():
                loss, numbers = stage.loss(step)
            value = float(sum_over_processes(loss.detach()))  # with several processes: each holds a share
            if not math.isfinite(value):
                kept = " The last good checkpoint is kept in the run folder." if checkpoint else ""
                raise AtuError(
                    f"stage {stage.name} step {step}: the loss became {value}; lower the learning rate "
                    f"(or method.grad_clip) and start the run again.{kept}"
                )
            numbers = sum_numbers(numbers)
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                sum_gradients(params)
                if stage.sam_rho:
                    moved = _move_uphill(params, stage.sam_rho)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast():
                        again, _ = stage.loss(step)
                    again.backward()
                    sum_gradients(params)
                    with torch.no_grad():
                        for p, move in moved:
                            p.sub_(move)
                if stage.grad_clip:
                    clip_gradients(params, stage.grad_clip)
                optimizer.step()
            last = numbers
            bar.update(1)
            if step % log_every == 0 or step == steps - 1:
                bar.set_postfix({k: f"{v:.4f}" for k, v in numbers.items()})
                log(
                    {
                        "event": "step",
                        "stage": stage.name,
                        "step": step,
                        "global_step": offsets[index] + step,
                        **numbers,
                    }
                )
            inside = step + 1 < steps
            if on_point and stage.evaluate and evaluate_every and (step + 1) % evaluate_every == 0 and inside:
                on_point(stage, step + 1, info)
            if checkpoint and every and (step + 1) % every == 0 and inside:
                checkpoint({"stage": index, "step": step + 1, "info": info}, optimizer, trained)
        bar.close()
        for p in everything:
            p.requires_grad_(False)
        for m in modules:
            m.eval()
        summary = {"stage": stage.name, "kind": stage.kind, "seconds": round(time.time() - started, 2), **info, **last}
        log({"event": "stage_end", **summary})
        on_stage_end(stage, summary)
        if checkpoint:
            checkpoint({"stage": index + 1, "step": 0, "info": {}}, None, trained)
