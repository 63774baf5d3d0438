"""Token-level unlearning baselines on one class: GA, GD, KL, NPO (± retain), SimNPO, DPO, RT.

A method is a weighted sum of named loss terms (DESIGN §8: `losses: [ga, retain_nll]`, `weights: [1, 1]`), trained on
the full model or on LoRA adapters (`lora: true`). The terms:
  ga          -NLL on the forget corpus (gradient ascent)
  npo         NPO (Zhang et al. 2024): -(2/β) log σ(-β (log p_θ(y) - log p_ref(y))) on forget passages
  simnpo      SimNPO (Fan et al. 2024): -(2/β) log σ(-(β/|y|) log p_θ(y) - γ), reference-free, length-normalised
  dpo         DPO: prefer the chosen answer (a refusal, or RWKU's counterfactual) over the forget text (rejected)
  rt          rejection tuning: NLL of refusals to questions about the target
  retain_nll  NLL on the general retain corpus (GD)
  retain_kl   KL(p_ref || p_θ) per token on the retain corpus
Reference log-probabilities on fixed data (forget passages, DPO pairs) are computed once before training.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from ..engine import Stage
from ..errors import AtuError
from ..settings import setting
from .base import Method, register
from .common import (
    OPTIMIZERS,
    LoraSettings,
    Sequences,
    add_lora,
    all_sequence_logps,
    lora_params,
    mean_nll,
    prompt_answer_sequences,
    sample_rows,
    sequence_logps,
    text_sequences,
)
from .losses import dpo_loss, kl_from_logits, npo_loss, simnpo_loss
from .training_data import dpo_pairs, refusal_pairs

TERMS = ("ga", "npo", "simnpo", "dpo", "rt", "retain_nll", "retain_kl")


@dataclass
class TokenConfig(LoraSettings):  # lora: true trains peft adapters instead of all weights
    name: str = "ga"
    losses: list[str] = setting(["ga"], "named loss terms, summed with `weights`", choices=TERMS, each=True)
    weights: list[float] = setting([1.0], "one weight per loss term")
    beta: float = setting(0.1, "NPO / SimNPO / DPO inverse temperature (NPO paper: 0.1)", above=0)
    gamma: float = setting(0.0, "SimNPO reward margin (SimNPO paper: 0 for unlearning on TOFU)")
    dpo_chosen: str = setting(
        "refusal",
        "what DPO prefers: a refusal, or RWKU's counterfactual (where shipped)",
        choices=("refusal", "counterfactual"),
    )
    steps: int = setting(20, "training steps", at_least=0)
    # the unlearning lr of the ATU defaults; at 1e-5 every token method collapsed on gemma-3-270m (docs/compare.md)
    lr: float = setting(3e-6, "learning rate", above=0)
    optimizer: str = setting("adam", "optimizer", choices=tuple(OPTIMIZERS))
    batch_size: int = setting(4, "sequences per step", at_least=1)
    grad_clip: float = setting(1.0, "gradient-norm clip (0: none)", at_least=0)


class TokenMethod(Method):
    Config = TokenConfig

    @staticmethod
    def validate(cfg) -> None:
        if not cfg.losses:
            raise AtuError(f"method.losses is empty; choose from {', '.join(TERMS)}")
        if len(cfg.weights) != len(cfg.losses):
            raise AtuError(
                f"method.weights has {len(cfg.weights)} entries for {len(cfg.losses)} losses; give one weight per loss"
            )

    def prepare(self, say=lambda msg: None) -> None:
        ctx, cfg, tok = self.ctx, self.cfg, self.ctx.tokenizer
        terms = set(cfg.losses)
        if terms & {"ga", "npo", "simnpo"}:
            self.forget = text_sequences(ctx.forget_texts, tok, ctx.max_length, ctx.device)
            self.training_data["forget"] = (
                f"{len(ctx.forget_texts)} forget-corpus passages ({len(self.forget)} sequences)"
            )
        if terms & {"retain_nll", "retain_kl"}:
            self.retain = text_sequences(ctx.general_texts, tok, ctx.max_length, ctx.device)
            self.training_data["retain"] = f"{len(ctx.general_texts)} general retain passages (atu/data/retain)"
        if "rt" in terms:
            pairs, source = refusal_pairs(ctx.target, tok, ctx.seed)
            self.refusals = prompt_answer(pairs, tok, ctx)
            self.training_data["rt"] = source
        if "dpo" in terms:
            triples, source = dpo_pairs(ctx.target, ctx.forget_texts, cfg.dpo_chosen, tok, ctx.seed)
            self.chosen = prompt_answer([(p, c) for p, c, _ in triples], tok, ctx)
            self.rejected = prompt_answer([(p, r) for p, _, r in triples], tok, ctx)
            self.training_data["dpo"] = source
        if cfg.lora:
            ctx.model = add_lora(ctx.model, cfg)
        self.model = ctx.model
        needs_ref = terms & {"npo", "dpo", "retain_kl"}
        if needs_ref:
            say("computing the reference model's log-probabilities once")
            with torch.no_grad(), self._reference():
                if "npo" in terms:
                    self.ref_forget = all_sequence_logps(self.model, self.forget, ctx.infer_batch_size)
                if "dpo" in terms:
                    self.ref_chosen = all_sequence_logps(self.model, self.chosen, ctx.infer_batch_size)
                    self.ref_rejected = all_sequence_logps(self.model, self.rejected, ctx.infer_batch_size)
        # KL needs the reference's full distribution at every step: a frozen copy (LoRA: the adapters switched off)
        self.reference = None
        if "retain_kl" in terms and not cfg.lora:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _reference(self):
        """Context in which self.model computes the reference (original) model's outputs."""
        return self.model.disable_adapter() if self.cfg.lora else contextlib.nullcontext()

    def params(self):
        return lora_params(self.model) if self.cfg.lora else list(self.model.parameters())

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        return [
            Stage(
                "unlearn1",
                "unlearn",
                cfg.steps,
                self.params,
                lambda params: OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr),
                self.loss,
                grad_clip=cfg.grad_clip,
                evaluate=True,
                train=[],
            )
        ]

    def _rows(self, seqs: Sequences) -> torch.Tensor:
        return sample_rows(len(seqs), self.cfg.batch_size, self.gen, seqs.ids.device)

    # -- the loss terms, by name (`losses: [npo, retain_nll]`)
    def ga(self) -> torch.Tensor:
        return -mean_nll(self.model, self.forget.batch(self._rows(self.forget)))

    def npo(self) -> torch.Tensor:
        rows = self._rows(self.forget)
        return npo_loss(sequence_logps(self.model, self.forget.batch(rows)), self.ref_forget[rows], self.cfg.beta)

    def simnpo(self) -> torch.Tensor:
        logps = sequence_logps(self.model, self.forget.batch(self._rows(self.forget)), average=True)
        return simnpo_loss(logps, self.cfg.beta, self.cfg.gamma)

    def dpo(self) -> torch.Tensor:
        rows = self._rows(self.chosen)
        chosen, rejected = self.chosen.batch(rows), self.rejected.batch(rows)
        return dpo_loss(
            sequence_logps(self.model, chosen),
            sequence_logps(self.model, rejected),
            self.ref_chosen[rows],
            self.ref_rejected[rows],
            self.cfg.beta,
        )

    def rt(self) -> torch.Tensor:
        return mean_nll(self.model, self.refusals.batch(self._rows(self.refusals)))

    def retain_nll(self) -> torch.Tensor:
        return mean_nll(self.model, self.retain.batch(self._rows(self.retain)))

    def retain_kl(self) -> torch.Tensor:
        batch = self.retain.batch(self._rows(self.retain))
        inputs = dict(input_ids=batch.ids, attention_mask=batch.attn.long(), use_cache=False)
        with torch.no_grad(), self._reference():
            ref_logits = (self.reference or self.model)(**inputs).logits
        return kl_from_logits(self.model(**inputs).logits, ref_logits, batch.attn)

    def term(self, name: str) -> torch.Tensor:
        return getattr(self, name)()  # TERMS lists the valid names; the config rejects any other

    def loss(self, step):
        total, logs = 0.0, {}
        for name, weight in zip(self.cfg.losses, self.cfg.weights):
            value = self.term(name)
            total = total + weight * value
            logs[name] = value.item()
        return total, logs


def prompt_answer(pairs, tok, ctx) -> Sequences:
    return prompt_answer_sequences(pairs, tok, ctx.max_length, ctx.device)


for _name in ("ga", "gd", "kl", "npo", "npo_gd", "simnpo", "dpo", "rt"):  # one class; the YAML picks the losses
    register(_name)(TokenMethod)
