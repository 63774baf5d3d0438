"""RWKU's knowledge probes: prompt, generate greedily, score by ROUGE-L recall of the reference answer (x100).

Prompts follow RWKU's evaluation code: "Please complete the blank..." for fill-in-the-blank, "Please briefly answer..."
for questions, special cases for the "affirmative suffix" (no "Answer:") and "incontext learning" (no "Question:") types,
and "Answer:" appended after the chat template when the tokenizer has one. RWKU scores with the `rouge` package;
we use `rouge-score` (Google's reimplementation, maintained): both compute ROUGE-L recall on lower-cased word tokens.
"""
from __future__ import annotations

import statistics
from functools import lru_cache

import torch

from ..distributed import is_sharded

FB_INSTRUCTION = "Please complete the blank in the following question."
QA_INSTRUCTION = "Please briefly answer the following question."
FORGET_SETS = ("forget_fb", "forget_qa", "forget_aa")
NEIGHBOR_SETS = ("neighbor_fb", "neighbor_qa")


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
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True) + answer_cue
    return body + answer_cue


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_recall(prediction: str, answer: str) -> float:
    """ROUGE-L recall of `answer` in `prediction`, x100 (RWKU's forget/neighbour score)."""
    return 100.0 * _scorer().score(answer, prediction or "NOANSWER")["rougeL"].recall


class _StopAtAnswerNewline:
    """Stop a row once its answer has started and then hit a newline (or EOS).

    RWKU stops at the first newline token; base models (no chat template) often emit a newline right after "Answer:"
    before answering, which would score an empty answer. Leading whitespace is therefore skipped, then we stop at '\n'.
    Written by hand: transformers' stop_strings stop at any newline, leading ones included.
    """

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 30,
             progress=None) -> list[str]:
    """Greedy completions, batched and left-padded; each is its first non-empty line."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
    outputs = [""] * len(prompts)
    tokenizer.padding_side = "left"
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=not getattr(tokenizer, "chat_template", None)).to(device)
        prompt_len = enc["input_ids"].shape[1]
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             stopping_criteria=StoppingCriteriaList([_StopAtAnswerNewline(tokenizer, prompt_len)]),
                             pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None,
                             synced_gpus=is_sharded(model))
        for row, i in enumerate(idx):
            text = tokenizer.decode(out[row, prompt_len:], skip_special_tokens=True)
            outputs[i] = text.strip().split("\n")[0].strip()
        if progress:
            progress(len(idx))
    return outputs


def evaluate_target(model, tokenizer, probes: dict, batch_size: int = 16, max_new_tokens: int = 30,
                    system: str | None = None, progress_factory=None) -> tuple[dict, list[dict]]:
    """Score every probe set of a target. Returns (metrics, per-probe records with prompt, prediction and score)."""
    flat = [(name, p) for name, items in probes.items() for p in items]
    if not flat:
        return {}, []
    prompts = [build_prompt(p, tokenizer, system) for _, p in flat]
    bar = progress_factory(len(prompts)) if progress_factory else None
    preds = generate(model, tokenizer, prompts, batch_size, max_new_tokens, progress=bar.update if bar else None)
    if bar:
        bar.close()
    records = [{"set": name, "query": p.query, "answer": p.answer, "type": p.type, "level": p.level,
                "prediction": pred, "score": rouge_recall(pred, p.answer)}
               for (name, p), pred in zip(flat, preds)]
    return summarize(records), records


def summarize(records: list[dict]) -> dict:
    """Mean score per set, plus count-weighted forget_all / neighbor_all (RWKU's aggregates)."""
    by_set: dict[str, list[float]] = {}
    for r in records:
        by_set.setdefault(r["set"], []).append(r["score"])
    metrics = {name: statistics.fmean(scores) for name, scores in by_set.items()}
    for total, parts in (("forget_all", FORGET_SETS), ("neighbor_all", NEIGHBOR_SETS)):
        scores = [s for name in parts for s in by_set.get(name, [])]
        if scores:
            metrics[total] = statistics.fmean(scores)
    metrics["n_probes"] = len(records)
    return metrics
