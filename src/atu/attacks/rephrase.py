"""Rephrasing attack: the target's forget questions asked in other words (our paraphrase sets, each item rewording one
official FB/QA probe with the same answer). Unlearning that removed the fact scores the paraphrases as low as the
originals; unlearning that only broke the official wording leaves them answered. Multi-hop questions (the fact reached
without naming the target) are listed beside it with their own before/after."""

from __future__ import annotations

import statistics

from .base import Attack, AttackContext, register, row

ORIGINAL_SETS = ("forget_fb", "forget_qa")


def paired_scores(paraphrases, before: list[dict], after: list[dict]) -> dict | None:
    """Mean scores over the paraphrases whose official original was evaluated before and after unlearning, and that
    were themselves evaluated: originals before/after, paraphrases before/after, and how many pairs."""

    def by_query(records, sets):
        return {r["query"]: r["score"] for r in records if r["set"] in sets}

    orig_b, orig_a = by_query(before, ORIGINAL_SETS), by_query(after, ORIGINAL_SETS)
    para_b, para_a = by_query(before, ("rephrase",)), by_query(after, ("rephrase",))
    pairs = [
        (p.query, p.original)
        for p in paraphrases
        if p.query in para_b and p.query in para_a and p.original in orig_b and p.original in orig_a
    ]
    if not pairs:
        return None
    mean = lambda scores, i: statistics.fmean(scores[pair[i]] for pair in pairs)
    return {
        "original_before": mean(orig_b, 1),
        "original_after": mean(orig_a, 1),
        "paraphrase_before": mean(para_b, 0),
        "paraphrase_after": mean(para_a, 0),
        "pairs": len(pairs),
    }


@register("rephrase")
class Rephrase(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        rows = []
        paired = paired_scores(ctx.target.probes.get("rephrase", []), ctx.predictions_before, ctx.predictions_after)
        if paired:
            # recovered: what the rewording brings back of what unlearning removed, in the official wording
            rows.append(
                row(
                    self.name,
                    "rephrase",
                    paired["original_before"],
                    paired["original_after"],
                    paired["paraphrase_after"],
                    f"{paired['pairs']} official FB/QA probes: before/after in their own wording, after attack "
                    f"reworded (the rewording scored {paired['paraphrase_before']:.1f} before unlearning)",
                )
            )
        if "multihop" in ctx.before:
            rows.append(
                row(
                    self.name,
                    "multihop",
                    ctx.before["multihop"],
                    ctx.after.get("multihop"),
                    None,
                    "no transform: the multi-hop questions' own scores (the fact reached without naming the target)",
                )
            )
        return rows
