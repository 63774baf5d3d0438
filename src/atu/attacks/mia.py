"""Membership inference as an attack: can the unlearned model still tell the target's texts (forget_mia.json) from
texts about other people (retain_mia.json)? Loss, zlib and min-k% AUCs, original model against the unlearned one."""

from __future__ import annotations

from ..console import say
from ..errors import AtuError
from ..evaluate.mia import mia, mia_texts
from .base import Attack, AttackContext, register, row


@register("mia")
class MembershipInference(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        members, others = mia_texts(ctx.target, ctx.cfg.eval.max_probes_per_file)  # the run's own MIA texts
        if not members:
            raise AtuError(f"{ctx.target.name} has no forget_mia.json/retain_mia.json for membership inference")

        def on_original():
            say("membership inference on the original model")
            return mia(ctx.original(), ctx.tokenizer, members, others)

        # the original's AUCs do not depend on the run: computed once for all runs attacked together
        key = ("mia original", repr(ctx.cfg.model), ctx.target.name, ctx.cfg.eval.max_probes_per_file)
        before = ctx.once(key, on_original)
        after = mia(ctx.model, ctx.tokenizer, members, others)
        return [
            row(
                self.name,
                key,
                100 * before[key],
                100 * after[key],
                100 * after[key],
                "forget_mia vs retain_mia; 50 = cannot tell apart",
            )
            for key in before
        ]
