"""Relearning attack: fine-tune the unlearned model for a few steps on half of the target's forget QA pairs, then score
the other half. Knowledge that was only hidden comes back from a handful of related examples."""

from __future__ import annotations

import copy
import math
import random

import torch

from ..console import say
from ..errors import AtuError
from ..evaluate.rwku import build_prompt
from ..metrics import recovered
from ..methods.common import mean_nll, prompt_answer_sequences
from .base import Attack, AttackContext, mean_score, register, row


def split_probes(probes: list, seed: int) -> tuple[list, list]:
    """A seeded half/half split: (train, held out). The held-out questions are never trained on."""
    order = list(range(len(probes)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return [probes[i] for i in order[:half]], [probes[i] for i in order[half:]]


# The relearning literature's protocol: the attacker's learning rate is unknown, so several are tried and the worst
# case counts; each is also applied to the original model, whose relearned score is what "recovered" is measured
# against (fine-tuning on half the facts can lift the other half above where the original model started).
LEARNING_RATES = (1e-6, 1e-5, 1e-4)
STEPS = 10


def relearn(
    model, tokenizer, train_probes: list, steps: int = STEPS, lr: float = 1e-5, batch_size: int = 4, seed: int = 0
) -> list[float]:
    """Full fine-tuning on (QA prompt, answer) pairs; returns the training losses."""
    device = next(model.parameters()).device
    seqs = prompt_answer_sequences(
        [(build_prompt(p, tokenizer), p.answer) for p in train_probes], tokenizer, 256, device
    )
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


@register("relearn")
class Relearn(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        train, held = split_probes(ctx.target.probes.get("forget_qa", []), ctx.cfg.run.seed)
        if not held:
            raise AtuError(f"{ctx.target.name} has no forget QA probes to relearn from")
        held_q = {p.query for p in held}
        pick = lambda r: r["set"] == "forget_qa" and r["query"] in held_q
        before, after = mean_score(ctx.predictions_before, pick), mean_score(ctx.predictions_after, pick)
        rows = []
        for lr in LEARNING_RATES:
            unlearned = self.relearned(ctx, "unlearned", train, held, lr)
            # the original's does not depend on the run: computed once for all runs attacked together
            # (the evaluation settings that change a score; not bookkeeping such as eval.save_points or eval.every)
            e = ctx.cfg.eval
            key = ("relearned original", repr(ctx.cfg.model), e.prompt, e.shots, e.scorer, e.max_new_tokens)
            key += (ctx.target.name, lr, STEPS)
            key += (tuple(p.query for p in train), tuple(p.query for p in held), ctx.cfg.run.seed)
            original = ctx.once(key, lambda: self.relearned(ctx, "original", train, held, lr))
            note = (
                f"held-out half, {len(train)} QA pairs, {STEPS} steps at lr {lr:g}; 'before' is the original "
                f"model after the same fine-tuning ({_fmt(before)} without it)"
            )
            rows.append(row(self.name, f"forget_qa, lr {lr:g}", original, after, unlearned, note))
        rows.append({**worst_case(rows), "metric": "forget_qa, worst lr"})
        return rows

    @staticmethod
    def relearned(ctx: AttackContext, which: str, train: list, held: list, lr: float) -> float | None:
        """The held-out half's forget QA score of a copy of the unlearned or the original model fine-tuned on the
        training half (the original is asked without the run's instruction)."""
        say(f"relearning the {which} model at lr {lr:g}")
        model, system = (ctx.model, "run's") if which == "unlearned" else (ctx.original(), None)
        attacked = copy.deepcopy(model)
        relearn(attacked, ctx.tokenizer, train, lr=lr, seed=ctx.cfg.run.seed)
        return ctx.score(attacked, {"forget_qa": held}, system).get("forget_qa")


def worst_case(rows: list[dict]) -> dict:
    """The attacker's best learning rate: the highest held-out score it brought the unlearned model to; on a tie
    (7 held-out questions make ties common), the one that recovered the larger share of what was forgotten."""
    score = lambda r: -1.0 if r["after_attack"] is None else r["after_attack"]
    share = lambda r: recovered(r) if recovered(r) is not None else -math.inf
    return max(rows, key=lambda r: (score(r), share(r)))


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"
