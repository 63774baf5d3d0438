"""RMU (Li et al. 2024, WMDP): at layer ℓ, push the forget text's activations toward a fixed random direction scaled
by c, keep the retain text's activations at the frozen model's; train only the MLPs of a few blocks up to ℓ.

The forward stops at ℓ (no logits), and the frozen model's retain activations are computed once: only blocks ≤ ℓ train.
Both terms are divided by the frozen activations' mean squared norm and c is a multiple of their mean norm, so one
setting transfers across models (WMDP's c=6.5, α=1200 are in Zephyr-7B's activation units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..engine import Stage
from ..models import decoder_layers
from ..settings import setting
from .base import Method, register
from .common import (
    OPTIMIZERS,
    LoraSettings,
    add_lora,
    cache_states,
    hidden_at,
    lora_params,
    pick_layer,
    sample_rows,
    text_sequences,
)
from .losses import masked_mean, relative_drift, upcast


@dataclass
class RMUConfig(LoraSettings):  # lora: true puts the adapters on the MLPs of the train_blocks instead
    name: str = "rmu"
    layer: Optional[int] = setting(
        None, "ℓ, the steered layer; None: round(layers / 4), at least 3 (WMDP: 7 of 32)", at_least=1
    )
    train_blocks: list[int] = setting(
        [-2, -1, 0], "offsets from ℓ of the blocks whose MLPs train (WMDP: ℓ-2..ℓ)", at_most=0, each=True
    )
    steer: float = setting(4.0, "c, as a multiple of the mean activation norm at ℓ", above=0)
    alpha: float = setting(100.0, "retain weight", at_least=0)
    steps: int = setting(40, "training steps", at_least=0)
    # WMDP's lr; at 1e-4 (40 steps) it collapsed forget and neighbour answers alike on gemma-3-270m
    lr: float = setting(5e-5, "learning rate", above=0)
    optimizer: str = setting("adamw", "optimizer", choices=tuple(OPTIMIZERS))
    batch_size: int = setting(4, "sequences per step (forget and retain each)", at_least=1)
    grad_clip: float = setting(1.0, "gradient-norm clip (0: none)", at_least=0)
    lora_targets: list[str] = setting(
        ["gate_proj", "up_proj", "down_proj", "fc1", "fc2"], "with lora: the MLP layers that get adapters"
    )


def rmu_forget_loss(h: torch.Tensor, control: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """||h - c·u||² / scale, averaged over masked positions."""
    return masked_mean((upcast(h) - control.view(1, 1, -1)).pow(2).sum(-1) / scale, mask)


@register("rmu")
class RMU(Method):
    Config = RMUConfig

    @staticmethod
    def layer(cfg, model) -> int:
        lowest = 1 - min(cfg.train_blocks, default=0)  # the layer must leave room for the blocks below it that train
        return pick_layer(model, "method.layer", cfg.layer, 0.25, lowest)

    @classmethod
    def check_model(cls, cfg, model) -> None:
        cls.layer(cfg, model)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.model, self.ell = ctx.model, self.layer(cfg, ctx.model)
        self.training_data = {
            "forget": f"{len(ctx.forget_texts)} forget-corpus passages",
            "retain": f"{len(ctx.general_texts)} general retain passages (atu/data/retain)",
        }

    def prepare(self, say=lambda msg: None) -> None:
        ctx = self.ctx
        self.forget = text_sequences(ctx.forget_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        self.retain = text_sequences(ctx.general_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        say(f"caching the frozen model's layer-{self.ell} activations on retain text")
        self.retain_states0 = cache_states(self.model, self.ell, self.retain, ctx.infer_batch_size)
        forget0 = cache_states(self.model, self.ell, self.forget, ctx.infer_batch_size)
        norms = forget0.float().norm(dim=-1)[self.forget.attn]
        self.scale = float(norms.pow(2).mean())
        g = torch.Generator().manual_seed(ctx.seed)
        u = torch.rand(forget0.shape[-1], generator=g)  # WMDP: uniform [0,1) then normalised
        self.control = (self.cfg.steer * float(norms.mean()) * u / u.norm()).to(ctx.device)
        if self.cfg.lora:
            self.model = ctx.model = add_lora(self.model, self.cfg, blocks=self._blocks())

    def _blocks(self) -> list[int]:
        """0-based indices of the blocks whose MLPs train."""
        return [self.ell + o - 1 for o in self.cfg.train_blocks]

    def params(self):
        if self.cfg.lora:
            return lora_params(self.model)
        blocks = decoder_layers(self.model)
        return [p for i in self._blocks() for p in blocks[i].mlp.parameters()]

    def loss(self, step):
        rows = sample_rows(len(self.forget), self.cfg.batch_size, self.gen, self.forget.ids.device)
        f = self.forget.batch(rows)
        forget = rmu_forget_loss(hidden_at(self.model, self.ell, f.ids, f.attn), self.control, f.attn, self.scale)
        rrows = sample_rows(len(self.retain), self.cfg.batch_size, self.gen, self.retain.ids.device)
        r = self.retain.batch(rrows)
        retain = relative_drift(
            hidden_at(self.model, self.ell, r.ids, r.attn), self.retain_states0[rrows, : r.ids.shape[1]], r.attn
        )
        return forget + self.cfg.alpha * retain, {"forget": forget.item(), "retain": retain.item()}

    def stages(self):
        cfg = self.cfg
        return [
            Stage(
                "unlearn1",
                "unlearn",
                cfg.steps,
                self.params,
                lambda p: OPTIMIZERS[cfg.optimizer](p, lr=cfg.lr),
                self.loss,
                grad_clip=cfg.grad_clip,
                evaluate=True,
            )
        ]
