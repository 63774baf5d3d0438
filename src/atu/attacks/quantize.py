"""Quantization attack: round every linear weight of the transformer blocks to b bits, round-to-nearest with one
symmetric scale per group of input channels (the scheme GPTQ/AWQ-style 4-bit formats share), then re-evaluate.
In the literature, GA-unlearned models recover much of the forgotten knowledge at 4 bits (Zhang et al. 2024).
Written by hand for the CPU: bitsandbytes needs a GPU; with one and the package present, `bnb` kernels are used."""
from __future__ import annotations

import torch
from torch import nn

from ..models import decoder_layers


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
