"""In-context attack: three true question-answer facts about the target go in the prompt before each forget question.
A model that only learnt to refuse or to avoid the name often answers once the context is set."""

from __future__ import annotations

import random

from ..data import Probe
from .base import Attack, AttackContext, register, row


def with_context(probes: list[Probe], n_facts: int = 3, seed: int = 0) -> list[Probe]:
    """Each QA probe rewritten as RWKU's 'incontext learning' type: facts from *other* probes, then the question."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(probes):
        others = [q for j, q in enumerate(probes) if j != i]
        facts = rng.sample(others, min(n_facts, len(others)))
        context = "".join(f"Question: {q.query}\nAnswer: {q.answer}\n" for q in facts)
        out.append(
            Probe(
                query=f"{context}Question: {p.query}",
                answer=p.answer,
                level=p.level,
                type="incontext learning",
                subject=p.subject,
            )
        )
    return out


@register("incontext")
class InContext(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        probes = with_context(ctx.target.probes.get("forget_qa", []), seed=ctx.cfg.run.seed)
        scores = ctx.score(ctx.model, {"forget_qa": probes})
        return [
            row(
                self.name,
                "forget_qa",
                ctx.before.get("forget_qa"),
                ctx.after.get("forget_qa"),
                scores.get("forget_qa"),
                "3 true QA facts in the prompt",
            )
        ]
