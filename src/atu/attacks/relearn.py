"""Relearning attack: fine-tune the unlearned model for a few steps on half of the target's forget QA pairs, then score
the other half. Knowledge that was only hidden comes back from a handful of related examples."""
from __future__ import annotations

import random

import torch

from ..evaluate.rwku import build_prompt
from ..methods.common import mean_nll, prompt_answer_sequences


def split_probes(probes: list, seed: int) -> tuple[list, list]:
    """A seeded half/half split: (train, held out). The held-out questions are never trained on."""
    order = list(range(len(probes)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return [probes[i] for i in order[:half]], [probes[i] for i in order[half:]]


def relearn(model, tokenizer, train_probes: list, steps: int = 10, lr: float = 1e-5, batch_size: int = 4,
            seed: int = 0) -> list[float]:
    """Full fine-tuning on (QA prompt, answer) pairs; returns the training losses."""
    device = next(model.parameters()).device
    seqs = prompt_answer_sequences([(build_prompt(p, tokenizer), p.answer) for p in train_probes], tokenizer, 256, device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(seqs), (min(batch_size, len(seqs)),), generator=gen).to(device)
        loss = mean_nll(model, seqs.batch(rows))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
