"""Quantization attack: the unlearned model's weights at 8 or 4 bits, then the forget and neighbour probes again.
In the literature, GA-unlearned models recover much of the forgotten knowledge at 4 bits (Zhang et al., ICLR 2025).

Two backends: `rtn` rounds every linear weight of the transformer blocks to b bits, round-to-nearest with one
symmetric scale per group of input channels (the scheme GPTQ/AWQ-style 4-bit formats share; written by hand, a few
lines that need no package); `bnb` loads the saved model through bitsandbytes as LLM.int8() (8 bits) or NF4 (4 bits),
on the CPU or a GPU."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .. import metrics
from ..models import decoder_layers, has_bitsandbytes, require_bitsandbytes
from .base import Attack, AttackContext, register, row


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """Fake-quantize a 2-D weight: per row, groups of `group_size` inputs share scale = max|w| / (2^(bits-1) - 1)."""
    out_features, in_features = w.shape
    g = group_size if in_features % group_size == 0 else in_features
    groups = w.float().reshape(out_features, in_features // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    q = (groups / scale).round().clamp(-qmax - 1, qmax)
    return (q * scale).reshape(out_features, in_features).to(w.dtype)


@torch.no_grad()
def quantize_model(model, bits: int, group_size: int = 128) -> int:
    """Quantize, in place, every nn.Linear inside the decoder blocks. Returns how many weights were changed."""
    n = 0
    for block in decoder_layers(model):
        for module in block.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(quantize_rtn(module.weight, bits, group_size))
                n += module.weight.numel()
    return n


@dataclass
class Quantization(Attack):
    bits: int
    backend: str  # "rtn" (by hand, any model) | "bnb" (bitsandbytes: int8 at 8 bits, NF4 at 4)

    def available(self) -> bool:
        return self.backend == "rtn" or has_bitsandbytes()

    def check(self) -> None:
        if self.backend == "bnb":
            require_bitsandbytes(f"the {self.name} attack")

    def run(self, ctx: AttackContext) -> list[dict]:
        if self.backend == "rtn":
            attacked = copy.deepcopy(ctx.model)
            quantize_model(attacked, self.bits)
            note = f"round-to-nearest, {self.bits} bits"
        else:
            attacked = ctx.load_saved("int8" if self.bits == 8 else "nf4")
            note = f"bitsandbytes {'int8' if self.bits == 8 else 'nf4'}"
        scores = ctx.score(attacked, ctx.probe_sets(metrics.FORGET + metrics.NEIGHBOR))
        return [
            row(self.name, key, ctx.before.get(key), ctx.after.get(key), scores.get(key), note)
            for key in ("forget_all", "neighbor_all")
        ]


for _name, _bits, _backend in (("quant8", 8, "rtn"), ("quant4", 4, "rtn"), ("bnb8", 8, "bnb"), ("bnb4", 4, "bnb")):
    register(_name, Quantization(_bits, _backend))
