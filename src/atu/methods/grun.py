"""GRUN (Ren et al. 2025, arXiv 2502.17823): a soft gate g(h) ∈ (0, 1) reading the hidden state at one layer, and a
low-rank ReFT (LoReFT) intervention at that layer, h ← h + g·Rᵀ(Wh + b − Rh), R with orthonormal rows. The base model
stays frozen; the gate learns to fire on target-related input and stay near 0 on retain text (a binary cross-entropy
term), while GA or NPO on the forget corpus drives the intervention and NLL on retain text keeps it harmless there.

Written as a forward hook rather than with pyreft/pyvene: pyreft 0.1.0 pins transformers==4.45.1, and we run
transformers 5. The run folder keeps only the intervention (grun.safetensors + grun.json); `attach` puts it back on
the base model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Stage
from ..errors import AtuError
from ..models import decoder_layers
from . import register
from .common import (OPTIMIZERS, Resumable, all_sequence_logps, count_parameters, masked_mean, mean_nll, pick_layer, sample_rows,
                     sequence_logps, text_sequences)
from .token import npo_loss


class GatedReFT(nn.Module):
    def __init__(self, d_model: int, rank: int, gate_bias: float = -2.0):
        super().__init__()
        self.config = {"d_model": d_model, "rank": rank}
        self.R = nn.utils.parametrizations.orthogonal(nn.Linear(d_model, rank, bias=False))
        self.W = nn.Linear(d_model, rank)
        self.gate = nn.Linear(d_model, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, gate_bias)  # starts mostly closed: g ≈ 0.12
        self.last_gate: Optional[torch.Tensor] = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(h.float()))
        delta = (self.W(h.float()) - self.R(h.float())) @ self.R.weight
        self.last_gate = g.squeeze(-1)
        return (h.float() + g * delta).to(h.dtype)


def attach(model, module: GatedReFT, layer: int):
    """Apply `module` to the output of block `layer` (1-based) on every forward; returns the hook handle."""
    def hook(_mod, _args, output):
        if isinstance(output, tuple):
            return (module(output[0]),) + tuple(output[1:])
        return module(output)

    return decoder_layers(model)[layer - 1].register_forward_hook(hook)


def load_intervention(model, folder: Path):
    """Put a saved GRUN intervention (grun.safetensors + grun.json in `folder`) back on `model`."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "grun.json").read_text())
    module = GatedReFT(meta["d_model"], meta["rank"])
    module.load_state_dict(load_file(str(folder / "grun.safetensors")))
    module.to(next(model.parameters()).device).eval()
    attach(model, module, meta["layer"])
    return module


@dataclass
class GRUNConfig:
    name: str = "grun"
    layer: Optional[int] = None  # None -> round(layers / 2)
    rank: int = 4
    # ga | npo: the loss that drives the intervention on forget text. NPO by default: with GA (unbounded) the
    # intervention grew until every gated answer was noise on gemma-3-270m (docs/compare.md)
    drive: str = "npo"
    beta: float = 0.1  # NPO
    retain_weight: float = 1.0
    gate_weight: float = 1.0
    steps: int = 20
    lr: float = 2e-4  # at 2e-3 the intervention turned every gated answer into noise on gemma-3-270m (docs/compare.md)
    optimizer: str = "adamw"
    batch_size: int = 4
    grad_clip: float = 1.0


@register("grun")
class GRUN(Resumable):
    Config = GRUNConfig
    needs_encoder = False
    uses_other_targets = True  # other people's text is the gate's hardest negative: the gate must not fire on it
    system_prompt = None

    @staticmethod
    def validate(cfg) -> None:
        if cfg.drive not in ("ga", "npo"):
            raise AtuError(f"method.drive={cfg.drive} is not ga or npo")
        if cfg.rank < 1:
            raise AtuError(f"method.rank={cfg.rank} must be at least 1")
        if cfg.optimizer not in OPTIMIZERS:
            raise AtuError(f"method.optimizer={cfg.optimizer} is not one of {sorted(OPTIMIZERS)}")

    @staticmethod
    def layer(cfg, model) -> int:
        return pick_layer(model, "method.layer", cfg.layer, 0.5)

    @classmethod
    def check_model(cls, cfg, model) -> None:
        cls.layer(cfg, model)

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx, self.model = cfg, ctx, ctx.model
        self.ell = self.layer(cfg, ctx.model)
        self.gen = torch.Generator().manual_seed(ctx.seed)
        torch.manual_seed(ctx.seed)
        d = ctx.model.config.get_text_config().hidden_size
        self.module = GatedReFT(d, cfg.rank).to(ctx.device)
        self.training_data = {"forget": f"{len(ctx.forget_texts)} forget-corpus passages",
                              "retain": f"{len(ctx.general_texts)} general retain passages (atu/data/retain) + "
                                        f"{len(ctx.retain_texts)} passages about {', '.join(ctx.other_targets) or 'no other target'}"}

    def prepare(self, progress=lambda msg: None) -> None:
        ctx = self.ctx
        self.forget = text_sequences(ctx.forget_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        self.retain = text_sequences(ctx.general_texts + ctx.retain_texts, ctx.tokenizer, ctx.max_length, ctx.device)
        if self.cfg.drive == "npo":
            self.ref_forget = all_sequence_logps(self.model, self.forget, ctx.infer_batch_size)
        self.handle = attach(self.model, self.module, self.ell)  # stays on: evaluation sees the intervention

    def params(self):
        return list(self.module.parameters())

    def loss(self, step):
        cfg = self.cfg
        rows = sample_rows(len(self.forget), cfg.batch_size, self.gen, self.forget.ids.device)
        f = self.forget.batch(rows)
        if cfg.drive == "ga":
            drive = -mean_nll(self.model, f)
        else:
            drive = npo_loss(sequence_logps(self.model, f), self.ref_forget[rows], cfg.beta)
        gate_f = self.module.last_gate
        r = self.retain.batch(sample_rows(len(self.retain), cfg.batch_size, self.gen, self.retain.ids.device))
        retain = mean_nll(self.model, r)
        gate_r = self.module.last_gate
        gate = 0.5 * (masked_mean(F.binary_cross_entropy(gate_f.float(), torch.ones_like(gate_f), reduction="none"), f.attn)
                      + masked_mean(F.binary_cross_entropy(gate_r.float(), torch.zeros_like(gate_r), reduction="none"), r.attn))
        loss = drive + cfg.retain_weight * retain + cfg.gate_weight * gate
        return loss, {"drive": drive.item(), "retain": retain.item(), "gate": gate.item(),
                      "gate_forget": masked_mean(gate_f.detach(), f.attn).item(),
                      "gate_retain": masked_mean(gate_r.detach(), r.attn).item()}

    def stages(self):
        cfg = self.cfg
        return [Stage("unlearn1", "unlearn", cfg.steps, self.params, self._optimizer, self.loss, grad_clip=cfg.grad_clip,
                      evaluate=True)]

    def _optimizer(self, params):
        # no weight decay on R's orthogonal parametrization: decaying its Householder factors collapses R to zero
        rotation = {id(p) for p in self.module.R.parameters()}
        groups = [{"params": [p for p in params if id(p) in rotation], "weight_decay": 0.0},
                  {"params": [p for p in params if id(p) not in rotation]}]
        return OPTIMIZERS[self.cfg.optimizer](groups, lr=self.cfg.lr)

    def modules(self):
        return [self.model, self.module]

    def trainable_parameters(self) -> int:
        return count_parameters(self.params())

    def model_to_save(self):
        return None  # the base model is unchanged: the run folder keeps only the intervention

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(out / "grun.safetensors"))
        (out / "grun.json").write_text(json.dumps({**self.module.config, "layer": self.ell}, indent=1))
