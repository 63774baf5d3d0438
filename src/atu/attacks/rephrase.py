"""Rephrasing attack: the target's questions asked in other words (our paraphrase and multi-hop sets), scored on the
unlearned model, against the run's own evaluation of them."""

from __future__ import annotations

from .base import Attack, AttackContext, register, row


@register("rephrase")
class Rephrase(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        return [
            row(
                self.name,
                key,
                ctx.before[key],
                ctx.after.get(key),
                ctx.after.get(key),
                "the run's own evaluation of these probes",
            )
            for key in ("rephrase", "multihop")
            if key in ctx.before
        ]
