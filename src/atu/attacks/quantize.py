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


def rtn_codes(w: torch.Tensor, bits: int, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes of a 2-D weight and their scales: per row, groups of `group_size` inputs share
    scale = max|w| / (2^(bits-1) - 1). Shapes (out, in / g, g) and (out, in / g, 1)."""
    out_features, in_features = w.shape
    g = group_size if in_features % group_size == 0 else in_features
    groups = w.float().reshape(out_features, in_features // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return (groups / scale).round().clamp(-qmax - 1, qmax), scale


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """Fake-quantize a 2-D weight to `bits` (rtn_codes times their scales)."""
    q, scale = rtn_codes(w, bits, group_size)
    return (q * scale).reshape(w.shape).to(w.dtype)


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


@torch.no_grad()
def update_size(original, unlearned, group_size: int = 128, sample: int = 1_000_000) -> dict:
    """How unlearning's weight change compares with the quantization step, over every nn.Linear of the decoder
    blocks: the % of weights whose 8-bit and 4-bit round-to-nearest code changed (an unchanged code means that
    quantization undoes the update exactly), and quantiles of |Δw| / the original 8-bit step over the weights that
    moved (a seeded sample of them). Returns {} when nothing moved."""
    changed = {8: 0, 4: 0}
    total, ratios = 0, []
    pairs = zip(decoder_layers(original), decoder_layers(unlearned))
    for a, b in ((ma, mb) for ba, bb in pairs for ma, mb in zip(ba.modules(), bb.modules())):
        if not isinstance(a, nn.Linear):
            continue
        w0, w1 = a.weight.float(), b.weight.float().to(a.weight.device)
        scales = {}
        for bits in changed:
            q0, scales[bits] = rtn_codes(w0, bits, group_size)
            changed[bits] += int((q0 != rtn_codes(w1, bits, group_size)[0]).sum())
        total += w0.numel()
        moved = w1 != w0
        if moved.any():
            step = scales[8].expand(-1, -1, w0.shape[1] // scales[8].shape[1]).reshape(w0.shape)
            ratios.append(((w1 - w0).abs() / step)[moved])
    if not ratios:
        return {}
    ratio = torch.cat(ratios)
    if len(ratio) > sample:
        ratio = ratio[torch.randperm(len(ratio), generator=torch.Generator().manual_seed(0))[:sample]]
    q = torch.quantile(ratio, torch.tensor([0.5, 0.9, 0.99]))
    return {
        "int8_codes_changed": 100 * changed[8] / total,
        "int4_codes_changed": 100 * changed[4] / total,
        "update_over_int8_step_p50": float(q[0]),
        "update_over_int8_step_p90": float(q[1]),
        "update_over_int8_step_p99": float(q[2]),
    }


@register("update_size")
class UpdateSize(Attack):
    """Not an attack: the diagnostic that explains the quantization rows (is the update smaller than a step?)."""

    def run(self, ctx: AttackContext) -> list[dict]:
        sizes = update_size(ctx.original(), ctx.model)
        note = "RTN, groups of 128; a code that did not change is undone by quantization"
        return [row(self.name, key, None, value, None, note) for key, value in sizes.items()]
