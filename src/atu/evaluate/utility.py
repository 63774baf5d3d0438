"""General utility as RWKU's evaluation code computes it (read from its source; `docs/evaluation.md` quotes it):

  MMLU        5-shot from the item's own examples, "Please following the previous examples and answer the given
              question." before the question, "Answer:" after it; the prediction is the highest next-token
              probability among " A".." D" (no generation). Accuracy.
  BBH         the task's 3-shot chain-of-thought prompt, "Following previous examples, answer the following questions
              and end with 'so the answer is'", "Q: ..." then "A:"; greedy, 256 tokens; the answer is the first
              "[t|T]he answer is (.*?)\\." match (else the whole output), exact match after lower-casing and dropping
              punctuation and articles. `bbh_rwku` is that code as it runs: it compares the prediction with each
              single character of the answer string (a string, iterated as if it were a list of answers).
  TruthfulQA  TruthfulQA's 6-shot QA primer, "Q: ..." then "A:"; every answer choice scored by its summed
              log-probability; MC1: the single true choice beats every false one; MC2: the normalised probability
              mass on the true choices.
  TriviaQA    5 inline examples, "Please briefly answer the following question:", "Q: ..." then "A:"; greedy,
              30 tokens, stop at EOS; exact match and token F1 against the best alias (the ATU paper's "Fac": F1).
  fluency     "Instruction: ...", greedy, 256 tokens; ROME's n-gram entropy (bits): (2/3·H2 + 4/3·H3) / 2 over the
              answer's words, averaged. RWKU splits words with NLTK's word_tokenize, whose sentence splitter needs a
              download; here NLTK's Treebank word tokenizer runs on sentences split at [.!?] (the same words but for
              rare abbreviations).

RWKU's sets are per target (targets 1-5 ship them); a target without its own sets is measured on a fixed, seeded
subsample of the full MMLU test split (5-shot from MMLU's dev split), labelled as such. Held-out perplexity on
general text is ours. Prompts go in the model's chat template when it has one; without one, the cue ("Answer:",
"A:") starts a new line where RWKU's would follow the template's assistant header.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import string
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch
from nltk.tokenize import NLTKWordTokenizer

from ..data import Target, general_retain_heldout, read_json
from .generation import complete, next_token_logits
from .mia import token_logps_of

MMLU = Path(__file__).resolve().parents[1] / "data" / "mmlu" / "mmlu.json.gz"
LETTERS = "ABCD"
QA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
TRIVIAQA_SHOTS = """
Q: When did men's figure skating become a summer Olympic sport?
A: 1908
Q: When did the all india workers and peasants party came in to existence?
A: November 1925
Q: Flight that went down in the hudson river?
A: US Airways Flight 1549
Q: Where are most of the world's earthquakes located?
A: Rim of Fire
Q: Csi when do grissom and sara reunite?
A: series finale
Please briefly answer the following question:
"""


def wrap(tokenizer, body: str, cue: str, spaced: bool = True) -> str:
    """The user message in the chat template (if any), then the cue; RWKU writes "A:" right after a newline or space
    and " A:" otherwise (`spaced`), "Answer:" always right after (MMLU)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        return text + (" " + cue if spaced and cue and text[-1] not in "\n " else cue)
    return body + (cue if not cue or body.endswith("\n") else "\n" + cue)


# ---------------------------------------------------------------- MMLU


def mmlu_prompt(item: dict, tokenizer) -> str:
    def block(q, choices, answer=None):
        text = "Question: " + q + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        return text + (f"\nAnswer: {LETTERS[answer]}\n\n" if answer is not None else "")

    head = f"The following are multiple choice questions (with answers) about {item['task'].replace('_', ' ')}.\n\n"
    shots = "".join(block(e["question"], e["choices"], e["answer"]) for e in item["examples"])
    body = head + shots + "Please following the previous examples and answer the given question.\n"
    return wrap(tokenizer, body + block(item["question"], item["choices"]), "Answer:", spaced=False)


def mmlu(model, tokenizer, items: list[dict], batch_size: int = 8) -> float:
    letters = [tokenizer.encode(" " + letter, add_special_tokens=False)[-1] for letter in LETTERS]
    prompts = [mmlu_prompt(it, tokenizer) for it in items]
    # one subject's questions share their 5-shot examples: batched together, the examples run once per batch
    logits = next_token_logits(model, tokenizer, prompts, letters, [it["task"] for it in items], batch_size)
    truth = torch.tensor([it["answer"] for it in items])
    return int((logits.argmax(-1) == truth).sum()) / len(items)


@lru_cache(maxsize=1)
def _mmlu() -> dict:
    return json.loads(gzip.decompress(MMLU.read_bytes()))


def mmlu_sample(n: int, seed: int) -> list[dict]:
    """n items of the full MMLU test split (seeded; the same n and seed give the same items), each with its
    subject's 5 dev questions as examples, in the shape of RWKU's retain_mmlu.json."""
    data = _mmlu()
    pool = [(subject, row) for subject in sorted(data["test"]) for row in data["test"][subject]]
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    return [{"task": s, **row, "examples": data["dev"][s]} for s, row in chosen]


# ---------------------------------------------------------------- BBH, TriviaQA: generation and exact match


def normalize(text: str) -> list[str]:
    """RWKU's answer normalisation: lower case, no punctuation, no articles; the words."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def exact_match(prediction: str, answers) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def token_f1(prediction: str, answers) -> float:
    def f1(pred, ref):
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            return float(pred == ref)
        return 0.0 if common == 0 else 2 * common / (len(pred) + len(ref))

    return max(f1(normalize(prediction), normalize(a)) for a in answers)


def bbh_answer(output: str) -> str:
    found = re.search(r"[t|T]he answer is (.*?)\.", output)
    answer = found.group(1).strip() if found else output.strip()
    return answer or "NOANSWER"


def bbh(model, tokenizer, items: list[dict], batch_size: int = 8) -> tuple[float, float]:
    """(exact match, RWKU's per-character exact match)."""
    instruction = (
        "\n\nFollowing previous examples, answer the following questions and end with 'so the answer is'\nQ: "
    )
    prompts = [wrap(tokenizer, it["cot"].strip() + instruction + it["question"], "A:") for it in items]
    outputs = complete(model, tokenizer, prompts, 256, batch_size, newline_stop=False)
    predictions = [bbh_answer(o) for o in outputs]
    em = sum(exact_match(p, [it["answer"]]) for p, it in zip(predictions, items)) / len(items)
    per_character = sum(exact_match(p, it["answer"]) for p, it in zip(predictions, items)) / len(items)
    return em, per_character


def triviaqa(model, tokenizer, items: list[dict], batch_size: int = 16) -> tuple[float, float]:
    """(exact match, token F1), each against the best alias."""
    prompts = [wrap(tokenizer, TRIVIAQA_SHOTS + f"Q: {it['question']}\n", "A:") for it in items]
    outputs = complete(model, tokenizer, prompts, 30, batch_size, newline_stop=False)
    em = sum(exact_match(o, it["answers"]) for o, it in zip(outputs, items)) / len(items)
    f1 = sum(token_f1(o, it["answers"]) for o, it in zip(outputs, items)) / len(items)
    return em, f1


# ---------------------------------------------------------------- TruthfulQA: summed log-probabilities


@torch.no_grad()
def completion_logps(model, tokenizer, prompt: str, completions: list[str]) -> list[float]:
    """RWKU's score_completions: prompt + " " + completion, the completion's tokens' summed log-probabilities."""
    device = next(model.parameters()).device
    sep = "" if prompt[-1] in "\n " else " "
    prompt_len = len(tokenizer(prompt)["input_ids"])
    rows = [tokenizer(prompt + sep + c)["input_ids"] for c in completions]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # right-padded: causal is enough
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logp = model(input_ids=ids, attention_mask=attn).logits.float().log_softmax(-1)
    out = []
    for k, r in enumerate(rows):
        positions = torch.arange(prompt_len, len(r), device=device)
        out.append(float(logp[k, positions - 1].gather(-1, ids[k, positions, None]).sum()))
    return out


def mc_scores(scores: dict[str, float], mc1: dict, mc2: dict) -> tuple[float, float]:
    """One TruthfulQA item from its answers' summed log-probabilities: MC1 (1 if the single true answer beats every
    false one) and MC2 (the normalised probability mass on the true answers)."""
    true1 = [scores[c] for c, label in zip(mc1["choices"], mc1["labels"]) if label == 1]
    false1 = [scores[c] for c, label in zip(mc1["choices"], mc1["labels"]) if label == 0]
    top = max(scores[c] for c in mc2["choices"])
    mass = [(math.exp(scores[c] - top), label) for c, label in zip(mc2["choices"], mc2["labels"])]
    return float(true1[0] > max(false1)), sum(p for p, label in mass if label == 1) / sum(p for p, _ in mass)


def truthfulqa(model, tokenizer, items: list[dict]) -> tuple[float, float]:
    total1 = total2 = 0.0
    for it in items:
        prompt = wrap(tokenizer, QA_PRIMER + "\n\nQ: " + it["question"], "A:")
        choices = list(dict.fromkeys(it["mc1_targets"]["choices"] + it["mc2_targets"]["choices"]))
        scores = dict(zip(choices, completion_logps(model, tokenizer, prompt, choices)))
        mc1, mc2 = mc_scores(scores, it["mc1_targets"], it["mc2_targets"])
        total1, total2 = total1 + mc1, total2 + mc2
    return total1 / len(items), total2 / len(items)


# ---------------------------------------------------------------- fluency


def words(text: str) -> list[str]:
    """NLTK's Treebank word tokens, sentence by sentence (see the module docstring)."""
    tokenizer = NLTKWordTokenizer()
    return [
        w for sentence in re.split(r"(?<=[.!?])\s+", text.strip()) if sentence for w in tokenizer.tokenize(sentence)
    ]


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's n-gram entropy (RWKU's fluency): mean of the weighted bigram and trigram entropies, in bits."""
    tokens = words(text)
    entropies = []
    for n in ns:
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        entropies.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * e for w, e in zip(weights, entropies)) / len(ns)


def fluency(model, tokenizer, items: list[dict], batch_size: int = 8) -> float:
    prompts = [wrap(tokenizer, f"Instruction: {it['instruction']}\n", "") for it in items]
    outputs = complete(model, tokenizer, prompts, 256, batch_size, newline_stop=False)
    return sum(ngram_entropy(o) for o in outputs) / len(outputs)


def answer_fluency(predictions: list[str]) -> float | None:
    """The same entropy over the model's answers to the probes themselves (noise about the target shows here)."""
    return sum(ngram_entropy(p) for p in predictions) / len(predictions) if predictions else None


def perplexity(model, tokenizer, texts: list[str]) -> float:
    logps = [lp for text in token_logps_of(model, tokenizer, texts, max_length=None) for lp in text]
    return math.exp(-sum(logps) / len(logps))


# ---------------------------------------------------------------- all of it


def utility(
    model,
    tokenizer,
    target: Target,
    batch_size: int = 8,
    limit: int | None = None,
    mmlu_items: int = 300,
    seed: int = 0,
    say=print,
) -> dict:
    """Every utility score with its chance level and wall time, and which sets made it: the target's own RWKU sets
    where it has them, else a seeded sample of `mmlu_items` MMLU test questions. `limit` caps items per set."""
    cap = (lambda xs: xs[:limit]) if limit else (lambda xs: xs)
    scores, chance, seconds, sets = {}, {}, {}, {}

    def own(name):
        path = target.file(name)
        return cap(read_json(path)) if path else None

    def timed(name, fn):
        t0 = time.time()
        say(f"utility: {name}")
        out = fn()
        seconds[name] = round(time.time() - t0, 1)
        return out

    target_items = own("retain_mmlu.json")
    items = target_items or cap(mmlu_sample(mmlu_items, seed))
    sets["mmlu"] = f"RWKU's {target.name} set" if target_items else f"full MMLU, {len(items)} questions (seed {seed})"
    scores["mmlu"], chance["mmlu"] = timed("mmlu", lambda: mmlu(model, tokenizer, items, batch_size)), 0.25
    if items := own("retain_bbh.json"):
        scores["bbh"], scores["bbh_rwku"] = timed("bbh", lambda: bbh(model, tokenizer, items, batch_size))
        chance["bbh"] = chance["bbh_rwku"] = None  # answer formats differ per task: no single chance level
    if items := own("truthful.json"):
        scores["truthfulqa_mc1"], scores["truthfulqa_mc2"] = timed(
            "truthfulqa", lambda: truthfulqa(model, tokenizer, items)
        )
        chance["truthfulqa_mc1"] = sum(1 / len(it["mc1_targets"]["choices"]) for it in items) / len(items)
        chance["truthfulqa_mc2"] = sum(
            sum(it["mc2_targets"]["labels"]) / len(it["mc2_targets"]["labels"]) for it in items
        ) / len(items)
    if items := own("triviaqa.json"):
        scores["triviaqa_em"], scores["triviaqa_f1"] = timed(
            "triviaqa", lambda: triviaqa(model, tokenizer, items, batch_size)
        )
        chance["triviaqa_em"] = chance["triviaqa_f1"] = 0.0
    if items := own("fluency.json"):
        scores["fluency_entropy"] = timed("fluency", lambda: fluency(model, tokenizer, items, batch_size))
        chance["fluency_entropy"] = None
    for name in ("bbh", "truthfulqa", "triviaqa", "fluency"):
        if name in seconds:
            sets[name] = f"RWKU's {target.name} set"
    held = cap(general_retain_heldout())
    scores["perplexity"] = timed("perplexity", lambda: perplexity(model, tokenizer, held))
    chance["perplexity"], sets["perplexity"] = None, "atu's held-out general text"
    return {"scores": scores, "chance": chance, "seconds": seconds, "sets": sets}
