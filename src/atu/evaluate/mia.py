"""Membership inference on a target's texts.

RWKU's figures (`rwku_mia`): FM and RM, 100 × the mean per-passage NLL on `forget_mia.json` (the target's own
Wikipedia passages) and `retain_mia.json` (other people's), each passage whole, BOS first, one at a time, as RWKU's
`eval_mia` computes its LOSS score (negated; the ATU reference reports it ×100). Unlearning should raise FM and leave
RM where it was.

The attack's view (`mia`): forget-side texts (members) against held-out texts (non-members), by loss,
zlib-normalised loss and min-k% probability (Shi et al. 2024), each as a ROC AUC: 0.5 = the model cannot tell them
apart; unlearning should move the forget texts toward the held-out ones.
"""

from __future__ import annotations

import math
import zlib

import torch

from .. import data as datalib


def mia_texts(target, limit: int | None = None) -> tuple[list[str], list[str]]:
    """The texts of a target's forget_mia.json and retain_mia.json (empty where missing), the first `limit` of each
    (eval.max_probes_per_file: quick looks)."""

    def load(name):
        path = target.file(name)
        return [it["text"] for it in datalib.read_json(path)][:limit] if path else []

    return load("forget_mia.json"), load("retain_mia.json")


def min_k_score(token_logps: list[float], k: float = 0.2) -> float:
    """Mean of the lowest k-fraction of token log-probabilities (higher = more likely seen in training)."""
    worst = sorted(token_logps)[: max(1, int(len(token_logps) * k))]
    return sum(worst) / len(worst)


def zlib_score(token_logps: list[float], text: str) -> float:
    """Total log-likelihood divided by the text's zlib-compressed length (higher = more likely seen)."""
    return sum(token_logps) / len(zlib.compress(text.encode("utf-8")))


def loss_score(token_logps: list[float]) -> float:
    return sum(token_logps) / len(token_logps)  # minus the mean NLL: higher = more likely seen


def auc(members: list[float], nonmembers: list[float]) -> float:
    """P(score of a member > score of a non-member), ties counted half (Mann-Whitney U / (n·m))."""
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


@torch.no_grad()
def token_logps_of(model, tokenizer, texts: list[str], max_length: int | None = 256) -> list[list[float]]:
    """log p(token_t | tokens < t) for every token after the first (BOS first), one list per text (cut at
    max_length tokens; None: whole)."""
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
        ids = ids["input_ids"].to(device)
        logits = model(input_ids=ids).logits[0, :-1]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        # cross_entropy takes the log-sum-exp without a second vocabulary-wide tensor
        out.append((-torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")).tolist())
    return out


def rwku_mia(model, tokenizer, forget_texts: list[str], retain_texts: list[str]) -> dict:
    """RWKU's FM and RM (module docstring); a passage whose loss is not finite is skipped, as RWKU skips NaN."""

    def figure(texts):
        nlls = [-loss_score(lp) for lp in token_logps_of(model, tokenizer, texts, max_length=None) if lp]
        nlls = [x for x in nlls if math.isfinite(x)]
        return 100 * sum(nlls) / len(nlls) if nlls else None

    return {"mia_fm": figure(forget_texts), "mia_rm": figure(retain_texts)}


def mia(model, tokenizer, forget_texts: list[str], heldout_texts: list[str]) -> dict:
    f, h = token_logps_of(model, tokenizer, forget_texts), token_logps_of(model, tokenizer, heldout_texts)
    return {
        "mia_loss_auc": auc([loss_score(x) for x in f], [loss_score(x) for x in h]),
        "mia_zlib_auc": auc(
            [zlib_score(x, t) for x, t in zip(f, forget_texts)], [zlib_score(x, t) for x, t in zip(h, heldout_texts)]
        ),
        "mia_mink_auc": auc([min_k_score(x) for x in f], [min_k_score(x) for x in h]),
    }
