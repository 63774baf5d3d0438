"""GRUN (Ren et al. 2025, arXiv 2502.17823): a soft gate g(h) ∈ (0, 1) reading the hidden state at one layer, and a
low-rank ReFT (LoReFT) intervention at that layer, h ← h + g·Rᵀ(Wh + b − Rh), R with orthonormal rows. The base model
stays frozen; the gate learns to fire on target-related input and stay near 0 on retain text (a binary cross-entropy
term), while GA or NPO on the forget corpus drives the intervention and NLL on retain text keeps it harmless there.

Written as a forward hook rather than with pyreft/pyvene: pyreft 0.1.0 pins transformers==4.45.1, and we run
transformers 5. The run folder keeps only the intervention (grun.safetensors + grun.json); `attach` puts it back on
the base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Stage
from ..models import decoder_layers
from ..runs import Run
from ..settings import setting
from .base import Method, register
from .common import OPTIMIZERS, all_sequence_logps, mean_nll, pick_layer, sample_rows, sequence_logps, text_sequences
from .losses import masked_mean, npo_loss, upcast

FILES = ("grun.safetensors", "grun.json")  # the intervention's weights and its shape and layer


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
        x = upcast(h).to(self.W.weight.dtype)
        g = torch.sigmoid(self.gate(x))
        delta = (self.W(x) - self.R(x)) @ self.R.weight
        self.last_gate = g.squeeze(-1)
        return (x + g * delta).to(h.dtype)


def attach(model, module: GatedReFT, layer: int):
    """Apply `module` to the output of block `layer` (1-based) on every forward; returns the hook handle."""

    def hook(_mod, _args, output):
        if isinstance(output, tuple):
            return (module(output[0]),) + tuple(output[1:])
        return module(output)

    return decoder_layers(model)[layer - 1].register_forward_hook(hook)


def load_intervention(model, run: Run):
    """Put a saved GRUN intervention (grun.safetensors + grun.json in the run folder) back on `model`."""
    meta = run.read_json(FILES[1])
    module = GatedReFT(meta["d_model"], meta["rank"])
    module.load_state_dict(run.read_tensors(FILES[0]))
    module.to(next(model.parameters()).device).eval()
    attach(model, module, meta["layer"])
    return module


@dataclass
class GRUNConfig:
    name: str = "grun"
    layer: Optional[int] = setting(
        None, "the layer the gate reads and the intervention edits; None: round(layers / 2)", at_least=1
    )
    rank: int = setting(4, "rank of the ReFT intervention", at_least=1)
    # NPO by default: with GA (unbounded) the intervention grew until every gated answer was noise on gemma-3-270m
    drive: str = setting("npo", "the loss that drives the intervention on forget text", choices=("ga", "npo"))
    beta: float = setting(0.1, "NPO inverse temperature", above=0)
    retain_weight: float = setting(1.0, "weight of the NLL on retain text", at_least=0)
    gate_weight: float = setting(1.0, "weight of the gate's cross-entropy (1 on forget, 0 on retain text)", at_least=0)
    steps: int = setting(20, "training steps", at_least=0)
    # at 2e-3 the intervention turned every gated answer into noise on gemma-3-270m (docs/compare.md)
    lr: float = setting(2e-4, "learning rate", above=0)
    optimizer: str = setting("adamw", "optimizer", choices=tuple(OPTIMIZERS))
    batch_size: int = setting(4, "sequences per step (forget and retain each)", at_least=1)
    grad_clip: float = setting(1.0, "gradient-norm clip (0: none)", at_least=0)


@register("grun")
class GRUN(Method):
    Config = GRUNConfig
    uses_other_targets = True  # other people's text is the gate's hardest negative: the gate must not fire on it

    @staticmethod
    def layer(cfg, model) -> int:
        return pick_layer(model, "method.layer", cfg.layer, 0.5)

    @classmethod
    def check_model(cls, cfg, model) -> None:
        cls.layer(cfg, model)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.model, self.ell = ctx.model, self.layer(cfg, ctx.model)
        torch.manual_seed(ctx.seed)
        d = ctx.model.config.get_text_config().hidden_size
        self.module = GatedReFT(d, cfg.rank).to(ctx.device)
        self.training_data = {
            "forget": f"{len(ctx.forget_texts)} forget-corpus passages",
            "retain": f"{len(ctx.general_texts)} general retain passages (atu/data/retain) + "
            f"{len(ctx.retain_texts)} passages about {', '.join(ctx.other_targets) or 'no other target'}",
        }

    def prepare(self, say=lambda msg: None) -> None:
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
        gate = 0.5 * (
            masked_mean(F.binary_cross_entropy(gate_f.float(), torch.ones_like(gate_f), reduction="none"), f.attn)
            + masked_mean(F.binary_cross_entropy(gate_r.float(), torch.zeros_like(gate_r), reduction="none"), r.attn)
        )
        loss = drive + cfg.retain_weight * retain + cfg.gate_weight * gate
        return loss, {
            "drive": drive.item(),
            "retain": retain.item(),
            "gate": gate.item(),
            "gate_forget": masked_mean(gate_f.detach(), f.attn).item(),
            "gate_retain": masked_mean(gate_r.detach(), r.attn).item(),
        }

    def stages(self):
        cfg = self.cfg
        return [
            Stage(
                "unlearn1",
                "unlearn",
                cfg.steps,
                self.params,
                self._optimizer,
                self.loss,
                grad_clip=cfg.grad_clip,
                evaluate=True,
            )
        ]

    def _optimizer(self, params):
        # no weight decay on R's orthogonal parametrization: decaying its Householder factors collapses R to zero
        rotation = {id(p) for p in self.module.R.parameters()}
        groups = [
            {"params": [p for p in params if id(p) in rotation], "weight_decay": 0.0},
            {"params": [p for p in params if id(p) not in rotation]},
        ]
        return OPTIMIZERS[self.cfg.optimizer](groups, lr=self.cfg.lr)

    def modules(self):
        return [self.model, self.module]

    def model_to_save(self):
        return None  # the base model is unchanged: the run folder keeps only the intervention

    def save(self, run: Run) -> None:
        run.save_tensors(FILES[0], self.module.state_dict())
        run.save_json(FILES[1], {**self.module.config, "layer": self.ell})

    @classmethod
    def rebuild(cls, run: Run, load):
        model, tok = load(None)  # the base model, with the run's intervention on it
        load_intervention(model, run)
        return model, tok, None
