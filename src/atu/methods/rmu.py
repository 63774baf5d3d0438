"""RMU (Li et al. 2024, WMDP): at layer ℓ, push the forget text's activations toward a fixed random direction scaled
by c, keep the retain text's activations at the frozen model's; train only the MLPs of a few blocks up to ℓ.

The forward stops at ℓ (no logits), and the frozen model's retain activations are computed once: only blocks ≤ ℓ train.
Both terms are divided by the frozen activations' mean squared norm and c is a multiple of their mean norm, so one
setting transfers across models (WMDP's c=6.5, α=1200 are in Zephyr-7B's activation units).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..engine import Stage
from ..errors import AtuError
from ..models import decoder_layers
from . import register
from .common import (OPTIMIZERS, LoraSettings, Resumable, add_lora, cache_states, count_parameters, hidden_at, lora_params,
                     masked_mean, merged, pick_layer, relative_drift, sample_rows, save_adapter, text_sequences)


@dataclass
class RMUConfig(LoraSettings):  # lora: true puts the adapters on the MLPs of the train_blocks instead
    name: str = "rmu"
    layer: Optional[int] = None  # None -> round(layers / 4), at least 3 (WMDP: 7 of 32)
    train_blocks: list[int] = field(default_factory=lambda: [-2, -1, 0])  # MLPs of blocks ℓ-2..ℓ (WMDP)
    steer: float = 4.0  # c as a multiple of the mean activation norm at ℓ
    alpha: float = 100.0  # retain weight
    steps: int = 40
    lr: float = 5e-5  # WMDP; at 1e-4 (40 steps) it collapsed forget and neighbour answers alike on gemma-3-270m
    optimizer: str = "adamw"
    batch_size: int = 4
    grad_clip: float = 1.0
    lora_targets: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj", "fc1", "fc2"])


def rmu_forget_loss(h: torch.Tensor, control: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """||h - c·u||² / scale, averaged over masked positions."""
    return masked_mean((h.float() - control.view(1, 1, -1)).pow(2).sum(-1) / scale, mask)


@register("rmu")
class RMU(Resumable):
    Config = RMUConfig
    needs_encoder = False
    system_prompt = None

    @staticmethod
    def validate(cfg) -> None:
        if cfg.steer <= 0 or cfg.alpha < 0:
            raise AtuError("method.steer must be positive and method.alpha non-negative")
        if cfg.optimizer not in OPTIMIZERS:
            raise AtuError(f"method.optimizer={cfg.optimizer} is not one of {sorted(OPTIMIZERS)}")
        if any(o > 0 for o in cfg.train_blocks):
            raise AtuError("method.train_blocks are offsets ≤ 0 from method.layer (blocks above ℓ get no gradient)")

    @staticmethod
    def layer(cfg, model) -> int:
        lowest = 1 - min(cfg.train_blocks, default=0)  # the layer must leave room for the blocks below it that train
        return pick_layer(model, "method.layer", cfg.layer, 0.25, lowest)

    @classmethod
    def check_model(cls, cfg, model) -> None:
        cls.layer(cfg, model)

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.model, self.ell = ctx.model, self.layer(cfg, ctx.model)
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.training_data = {"forget": f"{len(ctx.forget_texts)} forget-corpus passages",
                              "retain": f"{len(ctx.general_texts)} general retain passages (atu/data/retain)"}

    def prepare(self, progress=lambda msg: None) -> None:
        ctx = self.ctx
        self.forget = text_sequences(ctx.forget_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        self.retain = text_sequences(ctx.general_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        progress(f"caching the frozen model's layer-{self.ell} activations on retain text")
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
        retain = relative_drift(hidden_at(self.model, self.ell, r.ids, r.attn), self.retain_states0[rrows, :r.ids.shape[1]], r.attn)
        return forget + self.cfg.alpha * retain, {"forget": forget.item(), "retain": retain.item()}

    def stages(self):
        cfg = self.cfg
        return [Stage("unlearn1", "unlearn", cfg.steps, self.params, lambda p: OPTIMIZERS[cfg.optimizer](p, lr=cfg.lr),
                      self.loss, grad_clip=cfg.grad_clip, evaluate=True)]

    def modules(self):
        return [self.model]

    def trainable_parameters(self) -> int:
        return count_parameters(self.params())

    def model_to_save(self):
        return merged(self.model)

    def save(self, out) -> None:
        save_adapter(self.model, out)
