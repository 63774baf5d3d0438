"""Quantization attack: the unlearned model's weights at 8 or 4 bits, then the forget and neighbour probes again.
In the literature, GA-unlearned models recover much of the forgotten knowledge at 4 bits (Zhang et al., ICLR 2025).

Two backends: `rtn` rounds every linear weight of the transformer blocks to b bits (atu.quantization, by hand);
`bnb` loads the saved model through bitsandbytes as LLM.int8() (8 bits) or NF4 (4 bits), on the CPU or a GPU."""

from __future__ import annotations

import copy
from dataclasses import dataclass


from .. import metrics
from ..models import has_bitsandbytes, require_bitsandbytes
from ..quantization import quantize_model, update_size_rows
from .base import Attack, AttackContext, register, row


@dataclass
class Quantization(Attack):
    bits: int
    backend: str  # "rtn" (by hand, any model) | "bnb" (bitsandbytes: int8 at 8 bits, NF4 at 4)

    def available(self) -> bool:
        return self.backend == "rtn" or has_bitsandbytes()

    def check(self) -> None:
        if self.backend == "bnb":
            require_bitsandbytes(f"the {self.name} attack")

    def run(self, ctx: AttackContext) -> list[dict]:
        if self.backend == "rtn":
            attacked = copy.deepcopy(ctx.model)
            quantize_model(attacked, self.bits)
            note = f"round-to-nearest, {self.bits} bits"
        else:
            attacked = ctx.load_saved("int8" if self.bits == 8 else "nf4")
            note = f"bitsandbytes {'int8' if self.bits == 8 else 'nf4'}"
        scores = ctx.score(attacked, ctx.probe_sets(metrics.FORGET + metrics.NEIGHBOR))
        return [
            row(self.name, key, ctx.before.get(key), ctx.after.get(key), scores.get(key), note)
            for key in ("forget_all", "neighbor_all")
        ]


for _name, _bits, _backend in (("quant8", 8, "rtn"), ("quant4", 4, "rtn"), ("bnb8", 8, "bnb"), ("bnb4", 4, "bnb")):
    register(_name, Quantization(_bits, _backend))


@register("update_size")
class UpdateSize(Attack):
    """Not an attack: the diagnostic that explains the quantization rows (is the update smaller than a step?)."""

    def run(self, ctx: AttackContext) -> list[dict]:
        return update_size_rows(ctx.original(), ctx.model)
