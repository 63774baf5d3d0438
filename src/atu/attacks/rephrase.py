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


def on_original_scale(paired: dict) -> float:
    """The paraphrases' score after unlearning, times original before / paraphrase before."""
    return paired["paraphrase_after"] * paired["original_before"] / paired["paraphrase_before"]


@register("rephrase")
class Rephrase(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        rows = []
        paired = paired_scores(ctx.target.probes.get("rephrase", []), ctx.predictions_before, ctx.predictions_after)
        if paired and paired["paraphrase_before"] > 0:
            # A reworded question can be harder (or easier) for the model before any unlearning, so the paraphrases'
            # score after is put on the originals' scale (x original before / paraphrase before): "recovered" is then
            # the share of the originals' relative drop that the rewording does not show.
            scaled = on_original_scale(paired)
            note = (
                f"{paired['pairs']} official FB/QA probes: before/after in their own wording; after attack: their "
                f"paraphrases, {paired['paraphrase_before']:.1f} before -> {paired['paraphrase_after']:.1f} after, "
                "on the originals' scale"
            )
            rows.append(row(self.name, "rephrase", paired["original_before"], paired["original_after"], scaled, note))
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
