"""Representation probe: does the hidden state still encode the target? A logistic-regression probe on mean-pooled
hook-layer states separates target sentences (forget corpus) from unrelated sentences (general retain text); its
accuracy on held-out sentences is compared between the original and the unlearned model. Logistic regression is a
dozen lines of torch here; scikit-learn would be a dependency for this one fit."""

from __future__ import annotations

import random

import torch

from .. import data as datalib
from ..console import say
from ..evaluate.generation import sentences
from ..methods import get_method
from ..methods.common import hidden_at
from ..models import decoder_layers
from .base import Attack, AttackContext, register, row


def sentences_of(texts: list[str], min_words: int = 6) -> list[str]:
    return [s for t in texts for s in sentences(t, min_words)]


@torch.no_grad()
def pooled_states(model, tokenizer, texts: list[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    device = next(model.parameters()).device
    tokenizer.padding_side = "right"
    feats = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=64
        ).to(device)
        h = hidden_at(model, layer, enc["input_ids"], enc["attention_mask"].bool()).float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        feats.append((h * m).sum(1) / m.sum(1))
    tokenizer.padding_side = "left"
    return torch.cat(feats).cpu()


def split(pos: list[str], neg: list[str], seed: int, held_out: float = 0.3):
    """Balanced classes, then a seeded train / held-out split of sentences (no sentence in both)."""
    rng = random.Random(seed)
    n = min(len(pos), len(neg))
    items = [(s, 1) for s in rng.sample(pos, n)] + [(s, 0) for s in rng.sample(neg, n)]
    rng.shuffle(items)
    cut = int(len(items) * (1 - held_out))
    return items[:cut], items[cut:]


def fit_and_score(train_x, train_y, test_x, test_y, steps: int = 300, l2: float = 1e-3) -> float:
    """Standardise on the training set, fit logistic regression (LBFGS), return held-out accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(xs.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)
    y = train_y.float()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((((xt @ w + b) > 0).long() == test_y).float().mean())


def probe_accuracy(
    model, tokenizer, layer: int, target_texts: list[str], other_texts: list[str], seed: int = 0
) -> float:
    rng = random.Random(seed)  # at most 200 sentences a side: a probe needs no more, and the forward passes cost
    pos, neg = sentences_of(target_texts), sentences_of(other_texts)
    train, test = split(rng.sample(pos, min(200, len(pos))), rng.sample(neg, min(200, len(neg))), seed)
    tx = pooled_states(model, tokenizer, [s for s, _ in train], layer)
    vx = pooled_states(model, tokenizer, [s for s, _ in test], layer)
    return fit_and_score(tx, torch.tensor([y for _, y in train]), vx, torch.tensor([y for _, y in test]))


@register("probe")
class Probe(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        roots, seed = list(ctx.cfg.data.roots), ctx.cfg.run.seed
        others = [t for o in datalib.other_targets(ctx.target.name, 3, roots, seed) for t in o.forget_corpus[:40]]
        rows = []
        for i, layer in enumerate(self.layers(ctx)):
            # the original's accuracy does not depend on the run: computed once for all runs attacked together
            key = ("probe original", repr(ctx.cfg.model), ctx.target.name, tuple(roots), seed, layer)
            before = ctx.once(key, lambda: self.on_original(ctx, layer, others))
            after = probe_accuracy(ctx.model, ctx.tokenizer, layer, ctx.target.forget_corpus, others, seed)
            metric = "probe_accuracy" if i == 0 else f"probe_accuracy at layer {layer}"
            note = f"layer {layer}; target sentences vs other people's, held-out; 50 = chance"
            rows.append(row(self.name, metric, 100 * before, 100 * after, 100 * after, note))
        return rows

    @staticmethod
    def on_original(ctx: AttackContext, layer: int, others: list[str]) -> float:
        say(f"probing the original model at layer {layer}")
        return probe_accuracy(ctx.original(), ctx.tokenizer, layer, ctx.target.forget_corpus, others, ctx.cfg.run.seed)

    @staticmethod
    def layers(ctx: AttackContext) -> list[int]:
        """The layers the run's method worked on (ATU's hook layer, then its extra heads'), else round(0.9 × n)."""
        layers = get_method(ctx.cfg.method.name).representation_layers(ctx.run)
        return layers or [max(1, round(0.9 * len(decoder_layers(ctx.model))))]
