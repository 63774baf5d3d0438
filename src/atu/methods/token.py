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

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..engine import Stage
from ..errors import AtuError
from . import register
from .common import (OPTIMIZERS, LoraSettings, Resumable, Sequences, add_lora, all_sequence_logps, count_parameters,
                     lora_params, mean_nll, merged, sample_rows, save_adapter, sequence_logps, text_sequences)
from .training_data import dpo_pairs, refusal_pairs

TERMS = ("ga", "npo", "simnpo", "dpo", "rt", "retain_nll", "retain_kl")


@dataclass
class TokenConfig(LoraSettings):  # lora: true trains peft adapters instead of all weights
    name: str = "ga"
    losses: list[str] = field(default_factory=lambda: ["ga"])
    weights: list[float] = field(default_factory=lambda: [1.0])
    beta: float = 0.1  # NPO / SimNPO / DPO inverse temperature (NPO paper: 0.1)
    gamma: float = 0.0  # SimNPO reward margin (SimNPO paper: 0 for unlearning on TOFU)
    dpo_chosen: str = "refusal"  # refusal | counterfactual (RWKU's pair files; only where shipped)
    steps: int = 20
    lr: float = 3e-6  # the unlearning lr of the ATU defaults; at 1e-5 every token method collapsed on gemma-3-270m (docs/compare.md)
    optimizer: str = "adam"  # sgd | adam | adamw
    batch_size: int = 4
    grad_clip: float = 1.0


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def simnpo_loss(avg_logp: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    return -(2.0 / beta) * F.logsigmoid(-beta * avg_logp - gamma).mean()


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(p_ref || p_θ) over positions where mask is true."""
    ref, cur = ref_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    mask = mask.float()
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class TokenMethod(Resumable):
    Config = TokenConfig
    needs_encoder = False
    system_prompt = None

    @staticmethod
    def validate(cfg) -> None:
        unknown = [t for t in cfg.losses if t not in TERMS]
        if unknown or not cfg.losses:
            raise AtuError(f"method.losses has {unknown or 'nothing'}; choose from {', '.join(TERMS)}")
        if len(cfg.weights) != len(cfg.losses):
            raise AtuError(f"method.weights has {len(cfg.weights)} entries for {len(cfg.losses)} losses; give one weight per loss")
        if cfg.optimizer not in OPTIMIZERS:
            raise AtuError(f"method.optimizer={cfg.optimizer} is not one of {sorted(OPTIMIZERS)}")
        if cfg.steps < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise AtuError("method.steps must be >= 0, method.batch_size >= 1 and method.lr > 0")
        if cfg.beta <= 0:
            raise AtuError(f"method.beta={cfg.beta} must be positive")
        if cfg.dpo_chosen not in ("refusal", "counterfactual"):
            raise AtuError(f"method.dpo_chosen={cfg.dpo_chosen} is not refusal or counterfactual")

    @classmethod
    def check_model(cls, cfg, model) -> None:
        pass

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.training_data: dict = {}

    def prepare(self, progress=lambda msg: None) -> None:
        ctx, cfg, tok = self.ctx, self.cfg, self.ctx.tokenizer
        terms = set(cfg.losses)
        if terms & {"ga", "npo", "simnpo"}:
            self.forget = text_sequences(ctx.forget_texts, tok, ctx.max_length, ctx.device)
            self.training_data["forget"] = f"{len(ctx.forget_texts)} forget-corpus passages ({len(self.forget)} sequences)"
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
            progress("computing the reference model's log-probabilities once")
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
        import contextlib

        return self.model.disable_adapter() if self.cfg.lora else contextlib.nullcontext()

    def params(self):
        return lora_params(self.model) if self.cfg.lora else list(self.model.parameters())

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        return [Stage("unlearn1", "unlearn", cfg.steps, self.params,
                      lambda params: OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr), self.loss, grad_clip=cfg.grad_clip,
                      evaluate=True, train=[])]

    def _rows(self, seqs: Sequences) -> torch.Tensor:
        return sample_rows(len(seqs), self.cfg.batch_size, self.gen, seqs.ids.device)

    def term(self, name: str) -> torch.Tensor:
        cfg, model = self.cfg, self.model
        if name == "ga":
            return -mean_nll(model, self.forget.batch(self._rows(self.forget)))
        if name == "npo":
            rows = self._rows(self.forget)
            return npo_loss(sequence_logps(model, self.forget.batch(rows)), self.ref_forget[rows], cfg.beta)
        if name == "simnpo":
            return simnpo_loss(sequence_logps(model, self.forget.batch(self._rows(self.forget)), average=True),
                               cfg.beta, cfg.gamma)
        if name == "dpo":
            rows = self._rows(self.chosen)
            return dpo_loss(sequence_logps(model, self.chosen.batch(rows)), sequence_logps(model, self.rejected.batch(rows)),
                            self.ref_chosen[rows], self.ref_rejected[rows], cfg.beta)
        if name == "rt":
            return mean_nll(model, self.refusals.batch(self._rows(self.refusals)))
        if name == "retain_nll":
            return mean_nll(model, self.retain.batch(self._rows(self.retain)))
        if name == "retain_kl":
            batch = self.retain.batch(self._rows(self.retain))
            inputs = dict(input_ids=batch.ids, attention_mask=batch.attn.long(), use_cache=False)
            with torch.no_grad(), self._reference():
                ref_logits = (self.reference or model)(**inputs).logits
            return kl_from_logits(model(**inputs).logits, ref_logits, batch.attn)
        raise AssertionError(name)

    def loss(self, step):
        total, logs = 0.0, {}
        for name, weight in zip(self.cfg.losses, self.cfg.weights):
            value = self.term(name)
            total = total + weight * value
            logs[name] = value.item()
        return total, logs

    def modules(self):
        return [self.model]

    def trainable_parameters(self) -> int:
        return count_parameters(self.params())

    def model_to_save(self):
        return merged(self.model)

    def save(self, out) -> None:
        save_adapter(self.model, out)


def prompt_answer(pairs, tok, ctx) -> Sequences:
    from .common import prompt_answer_sequences

    return prompt_answer_sequences(pairs, tok, ctx.max_length, ctx.device)


for _name in ("ga", "gd", "kl", "npo", "npo_gd", "simnpo", "dpo", "rt"):  # one class; the YAML picks the losses
    register(_name)(TokenMethod)
