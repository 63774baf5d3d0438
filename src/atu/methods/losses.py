"""Losses more than one method uses, each against the formula it implements (tests check them on hand values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import sum_over_processes


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 for a loss (bf16 activations lose too much); float64 stays float64 (exactness tests)."""
    return x if x.dtype == torch.float64 else x.float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of the whole batch: with several processes each holds a share of the rows and
    divides by the count over all of them, so the summed gradients equal one process's (see atu/distributed.py)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / sum_over_processes(mask.sum()).clamp(min=1)


def relative_drift(h: torch.Tensor, h0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """||h - h0||² / ||h0||² per position: scale-free, so one weight works across models."""
    h, h0 = upcast(h), upcast(h0)
    err = (h - h0).pow(2).sum(-1) / h0.pow(2).sum(-1).clamp(min=1e-6)
    return masked_mean(err, mask)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): -(2/β) log σ(-β (log p_θ(y) - log p_ref(y))), averaged over sequences."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def simnpo_loss(avg_logp: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): -(2/β) log σ(-β · mean-token log p_θ(y) - γ), reference-free."""
    return -(2.0 / beta) * F.logsigmoid(-beta * avg_logp - gamma).mean()


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(p_ref || p_θ) over positions where mask is true."""
    ref, cur = upcast(ref_logits).log_softmax(-1), upcast(logits).log_softmax(-1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
