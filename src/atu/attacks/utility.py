"""Not an attack: general utility (evaluate/utility.py: the target's RWKU sets or a seeded MMLU sample, and held-out
perplexity) of the attacked model beside the original's, so `atu attack A B --attacks utility` measures utility at
matched forgetting and `atu compare --attacks utility` at each run's end ("keeps utility" needs the same point the
forgetting was read at)."""

from __future__ import annotations

from ..console import say
from ..evaluate.utility import utility
from ..metrics import utility_set
from .base import Attack, AttackContext, register, row


@register("utility")
class Utility(Attack):
    def run(self, ctx: AttackContext) -> list[dict]:
        e, seed = ctx.cfg.eval, ctx.cfg.run.seed

        def measure(model) -> dict:
            return utility(model, ctx.tokenizer, ctx.target, e.batch_size, e.utility_limit, e.mmlu_items, seed, say)

        # the original's utility does not depend on the run: measured once for all runs attacked together
        key = ("utility original", repr(ctx.cfg.model), ctx.target.name, e.utility_limit, e.mmlu_items, seed)
        before = ctx.once(key, lambda: measure(ctx.original()))
        after = measure(ctx.model)
        return [
            row(self.name, name, before["scores"][name], value, None, after["sets"].get(utility_set(name), ""))
            for name, value in after["scores"].items()
        ]
