"""The one training loop. A method hands it stages; each stage names its parameters, optimizer, loss and step count.
The engine freezes everything else, steps, clips, logs, stops on a non-finite loss, and calls back after stages that
ask for an evaluation. It knows no method by name."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

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


def run_stages(stages: list[Stage], modules: list[nn.Module], on_stage_end: Callable[[Stage, dict], None],
               log: Callable[[dict], None], log_every: int = 10) -> None:
    """Run `stages` in order. `modules` are everything that could train; only a stage's own params get gradients."""
    from tqdm.auto import tqdm

    everything = [p for m in modules for p in m.parameters()]
    for index, stage in enumerate(stages):
        info = stage.setup() if stage.setup else {}
        params = stage.params()
        chosen = {id(p) for p in params}
        for p in everything:
            p.requires_grad_(id(p) in chosen)
        for m in modules:
            m.eval()
        for m in stage.train:
            m.train()
        optimizer = stage.optimizer(params) if stage.steps > 0 else None
        log({"event": "stage_start", "stage": stage.name, "kind": stage.kind, "index": index, "steps": stage.steps, **info})
        started, last = time.time(), {}
        bar = tqdm(range(stage.steps), desc=f"{stage.name:>10}", disable=not sys.stderr.isatty(), leave=False)
        for step in bar:
            loss, numbers = stage.loss(step)
            if not math.isfinite(loss.item()):
                raise AtuError(f"stage {stage.name} step {step}: loss became {loss.item()}; lower the learning rate "
                               "(or raise method.grad_clip) and run again")
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                if stage.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
                optimizer.step()
            last = numbers
            if step % log_every == 0 or step == stage.steps - 1:
                bar.set_postfix({k: f"{v:.4f}" for k, v in numbers.items()})
                log({"event": "step", "stage": stage.name, "step": step, **numbers})
        for p in everything:
            p.requires_grad_(False)
        for m in modules:
            m.eval()
        summary = {"stage": stage.name, "kind": stage.kind, "seconds": round(time.time() - started, 2), **info, **last}
        log({"event": "stage_end", **summary})
        on_stage_end(stage, summary)
