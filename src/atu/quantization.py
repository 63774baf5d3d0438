"""Round-to-nearest quantization of a model's linear weights, and how an update compares with its step.

RTN: every linear weight of the transformer blocks to b bits, one symmetric scale per group of input channels (the
scheme GPTQ/AWQ-style 4-bit formats share; written by hand, a few lines that need no package). The `quant8`/`quant4`
attacks use it, and every run's report states how unlearning's update compares with the 8/4-bit step
(`update_size`): an update smaller than half a step is undone by quantization."""

from __future__ import annotations

import torch
from torch import nn

from .metrics import attack_row
from .models import decoder_layers


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


@torch.no_grad()
def update_size(original, unlearned, group_size: int = 128, sample: int = 1_000_000) -> dict:
    """How unlearning's weight change compares with the quantization step, over every nn.Linear of the decoder
    blocks: the % of weights whose 8-bit and 4-bit round-to-nearest code changed (an unchanged code means that
    quantization undoes the update exactly), and quantiles of |Δw| / the original 8-bit step over the weights that
    moved (a seeded sample of them). Returns {} when nothing moved."""
    changed = {8: 0, 4: 0}
    total, ratios = 0, []
    pairs = []  # the same Linear by name in each block (a wrapped layer, e.g. a LoRA adapter, has no partner)
    for block0, block1 in zip(decoder_layers(original), decoder_layers(unlearned)):
        named = dict(block1.named_modules())
        pairs += [(a, named.get(n)) for n, a in block0.named_modules() if isinstance(a, nn.Linear)]
    for a, b in pairs:
        if type(b) is not nn.Linear or b.weight.shape != a.weight.shape:
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


def update_size_rows(original, unlearned) -> list[dict]:
    """update_size as robustness-table rows (the `update_size` attack's, and every run report's)."""
    note = "RTN, groups of 128; a code that did not change is undone by quantization"
    return [
        attack_row("update_size", key, None, value, None, note)
        for key, value in update_size(original, unlearned).items()
    ]
