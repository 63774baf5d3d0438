"""RWKU's knowledge probes: prompt, generate greedily, score by ROUGE-L recall of the reference answer (x100).

Prompts follow RWKU's evaluation code: "Please complete the blank..." for fill-in-the-blank, "Please briefly answer..."
for questions, special cases for the "affirmative suffix" (no "Answer:") and "incontext learning" (no "Question:"),
and "Answer:" appended after the chat template when the tokenizer has one. RWKU scores with the `rouge` package;
we use `rouge-score` (Google's reimplementation, maintained): both compute ROUGE-L recall on lower-cased word tokens.
"""

from __future__ import annotations

import statistics
from functools import lru_cache


from .. import metrics
from ..console import progress
from .generation import generate

FB_INSTRUCTION = "Please complete the blank in the following question."
QA_INSTRUCTION = "Please briefly answer the following question."


def build_prompt(probe, tokenizer, system: str | None = None) -> str:
    """The RWKU prompt for one probe; `system` text (e.g. an in-context-unlearning instruction) goes first."""
    if probe.level == "1":
        body, answer_cue = f"{FB_INSTRUCTION}\nQuestion: {probe.query}\n", "Answer:"
    elif probe.type == "affirmative suffix":
        body, answer_cue = f"{QA_INSTRUCTION}\nQuestion: {probe.query}", ""
    elif probe.type == "incontext learning":
        body, answer_cue = f"{QA_INSTRUCTION}\n{probe.query}\n", "Answer:"
    else:
        body, answer_cue = f"{QA_INSTRUCTION}\nQuestion: {probe.query}\n", "Answer:"
    if system:
        body = system.strip() + "\n" + body
    if getattr(tokenizer, "chat_template", None):
        return (
            tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
            + answer_cue
        )
    return body + answer_cue


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_recall(prediction: str, answer: str) -> float:
    """ROUGE-L recall of `answer` in `prediction`, x100 (RWKU's forget/neighbour score)."""
    return 100.0 * _scorer().score(answer, prediction or "NOANSWER")["rougeL"].recall


def evaluate_target(
    model, tokenizer, probes: dict, batch_size: int = 16, max_new_tokens: int = 30, system: str | None = None
) -> tuple[dict, list[dict]]:
    """Score every probe set of a target. Returns (metrics, per-probe records with prompt, prediction and score)."""
    flat = [(name, p) for name, items in probes.items() for p in items]
    if not flat:
        return {}, []
    prompts = [build_prompt(p, tokenizer, system) for _, p in flat]
    with progress(len(prompts)) as bar:
        preds = generate(model, tokenizer, prompts, batch_size, max_new_tokens, progress=bar.update)
    records = [
        {
            "set": name,
            "query": p.query,
            "answer": p.answer,
            "type": p.type,
            "level": p.level,
            "prediction": pred,
            "score": rouge_recall(pred, p.answer),
        }
        for (name, p), pred in zip(flat, preds)
    ]
    return summarize(records), records


def summarize(records: list[dict]) -> dict:
    """Mean score per set, plus the registered aggregates (forget_all, neighbor_all, ...)."""
    by_set: dict[str, list[float]] = {}
    for r in records:
        by_set.setdefault(r["set"], []).append(r["score"])
    out = {name: statistics.fmean(scores) for name, scores in by_set.items()}
    return out | metrics.aggregate(by_set) | {"n_probes": len(records)}
