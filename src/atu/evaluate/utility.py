"""General utility as RWKU measures it, on RWKU's shared sets (shipped in data/rwku/official/1_Stephen_King/):
MMLU (5-shot, accuracy), BBH (chain-of-thought prompts, exact match), TruthfulQA (MC1/MC2 by log-likelihood),
TriviaQA (any alias in the answer), fluency (n-gram entropy of generations, as ROME/RWKU compute it), plus perplexity
on held-out general text. Each score comes with its chance level: on a small model several sit near it."""

from __future__ import annotations

import json
import math
import re
import string
import time
from collections import Counter

import torch

from ..data import SHIPPED
from ..distributed import is_sharded
from .rwku import generate

UTILITY_DIR = SHIPPED / "official" / "1_Stephen_King"
LETTERS = "ABCD"


def _load(name: str) -> list:
    return json.loads((UTILITY_DIR / name).read_text())


def _wrap(tokenizer, body: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    return body


def _mc_block(q: str, choices: list[str]) -> str:
    return q.strip() + "\n" + "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices)) + "Answer:"


@torch.no_grad()
def _next_token_logits(model, tokenizer, prompts: list[str], batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        # logits of the last position only: all positions of a 5-shot batch over a 262k vocabulary need ~17 GB
        out.append(model(**enc, logits_to_keep=1).logits[:, -1].float().cpu())
    return torch.cat(out)


def mmlu(model, tokenizer, items: list[dict], batch_size: int = 8) -> float:
    """5-shot; the prediction is the letter among A-D with the highest next-token logit."""
    prompts = []
    for it in items:
        shots = "".join(
            _mc_block(e["question"], e["choices"]) + f" {LETTERS[e['answer']]}\n\n" for e in it["examples"]
        )
        head = f"The following are multiple choice questions (with answers) about {it['task'].replace('_', ' ')}.\n\n"
        prompts.append(_wrap(tokenizer, head + shots + _mc_block(it["question"], it["choices"])))
    letter_ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    logits = _next_token_logits(model, tokenizer, prompts, batch_size)[:, letter_ids]
    return float((logits.argmax(-1) == torch.tensor([it["answer"] for it in items])).float().mean())


def bbh_answer(text: str) -> str:
    m = re.search(r"answer is (.+?)(?:\.\s|\.$|$|\n)", text)
    return (m.group(1) if m else text.strip().split("\n")[0]).strip().strip(".")


def bbh(model, tokenizer, items: list[dict], batch_size: int = 8, max_new_tokens: int = 128) -> float:
    prompts = [
        _wrap(tokenizer, f"{it['cot'].strip()}\n\nQ: {it['question']}\nA: Let's think step by step.") for it in items
    ]
    outs = _generate_free(model, tokenizer, prompts, batch_size, max_new_tokens, stop_at_blank_line=True)
    return sum(bbh_answer(o) == it["answer"] for o, it in zip(outs, items)) / len(items)


@torch.no_grad()
def _choice_logps(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    device = next(model.parameters()).device
    p = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    out = []
    for c in choices:
        cont = tokenizer(" " + c, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        ids = torch.cat([p, cont], 1)
        logp = model(input_ids=ids).logits[0, p.shape[1] - 1 : -1].float().log_softmax(-1)
        out.append(float(logp.gather(-1, cont[0, :, None]).sum()))
    return out


def truthfulqa(model, tokenizer, items: list[dict]) -> tuple[float, float]:
    """MC1: the single true choice scores highest. MC2: normalised probability mass on the true choices."""
    mc1, mc2 = [], []
    for it in items:
        prompt = _wrap(tokenizer, f"Q: {it['question']}\nA:")
        s1 = _choice_logps(model, tokenizer, prompt, it["mc1_targets"]["choices"])
        mc1.append(float(max(range(len(s1)), key=s1.__getitem__) == it["mc1_targets"]["labels"].index(1)))
        s2 = _choice_logps(model, tokenizer, prompt, it["mc2_targets"]["choices"])
        probs = [math.exp(s - max(s2)) for s in s2]
        true = sum(p for p, label in zip(probs, it["mc2_targets"]["labels"]) if label == 1)
        mc2.append(true / sum(probs))
    return sum(mc1) / len(mc1), sum(mc2) / len(mc2)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def triviaqa(model, tokenizer, items: list[dict], batch_size: int = 16) -> float:
    from .rwku import QA_INSTRUCTION

    prompts = [_wrap(tokenizer, f"{QA_INSTRUCTION}\nQuestion: {it['question']}\n") + "Answer:" for it in items]
    outs = generate(model, tokenizer, prompts, batch_size, 30)
    return sum(
        any(normalize(a) and normalize(a) in normalize(o) for a in it["answers"]) for o, it in zip(outs, items)
    ) / len(items)


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's n-gram entropy (used by RWKU for fluency): weighted mean of the bigram and trigram entropies (bits)."""
    tokens = text.split()
    ents = []
    for n in ns:
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        ents.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * e for w, e in zip(weights, ents)) / len(ns)


def fluency(model, tokenizer, items: list[dict], batch_size: int = 16, max_new_tokens: int = 128) -> float:
    prompts = [_wrap(tokenizer, it["instruction"] + "\n") for it in items]
    outs = _generate_free(model, tokenizer, prompts, batch_size, max_new_tokens)
    return sum(ngram_entropy(o) for o in outs) / len(outs)


@torch.no_grad()
def _generate_free(model, tokenizer, prompts, batch_size, max_new_tokens, stop_at_blank_line=False) -> list[str]:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outs = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
            synced_gpus=is_sharded(model),
        )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outs.append(text.split("\n\n")[0] if stop_at_blank_line else text)
    return outs


def perplexity(model, tokenizer, texts: list[str]) -> float:
    from .mia import token_logps_of

    logps = [lp for text in token_logps_of(model, tokenizer, texts, max_length=None) for lp in text]
    return math.exp(-sum(logps) / len(logps))


def utility(model, tokenizer, batch_size: int = 8, limit: int | None = None, progress=print) -> dict:
    """All utility scores with their chance levels and wall time; `limit` caps items per set (quick looks)."""
    from ..data import general_retain_heldout

    cap = (lambda xs: xs[:limit]) if limit else (lambda xs: xs)
    result, chance, seconds = {}, {}, {}

    def timed(name, fn):
        t0 = time.time()
        progress(f"utility: {name}")
        out = fn()
        seconds[name] = round(time.time() - t0, 1)
        return out

    mm = cap(_load("retain_mmlu.json"))
    result["mmlu"], chance["mmlu"] = timed("mmlu", lambda: mmlu(model, tokenizer, mm, batch_size)), 0.25
    bb = cap(_load("retain_bbh.json"))
    result["bbh"] = timed("bbh", lambda: bbh(model, tokenizer, bb, batch_size))
    chance["bbh"] = None  # answer formats differ per task (True/False, (A)-(K), free text): no single chance level
    tq = cap(_load("truthful.json"))
    result["truthfulqa_mc1"], result["truthfulqa_mc2"] = timed("truthfulqa", lambda: truthfulqa(model, tokenizer, tq))
    chance["truthfulqa_mc1"] = sum(1 / len(it["mc1_targets"]["choices"]) for it in tq) / len(tq)
    chance["truthfulqa_mc2"] = sum(
        sum(it["mc2_targets"]["labels"]) / len(it["mc2_targets"]["labels"]) for it in tq
    ) / len(tq)
    tr = cap(_load("triviaqa.json"))
    result["triviaqa"], chance["triviaqa"] = timed("triviaqa", lambda: triviaqa(model, tokenizer, tr, batch_size)), 0.0
    fl = cap(_load("fluency.json"))
    result["fluency_entropy"], chance["fluency_entropy"] = (
        timed("fluency", lambda: fluency(model, tokenizer, fl, batch_size)),
        None,
    )
    held = cap(general_retain_heldout())
    result["perplexity"], chance["perplexity"] = timed("perplexity", lambda: perplexity(model, tokenizer, held)), None
    return {"scores": result, "chance": chance, "seconds": seconds}
