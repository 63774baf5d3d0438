"""The one batched decoder every generating path uses (probes, utility, the zero-shot forget corpus, attacks).

Prompts are sorted by token length into batches (little padding), left-padded, and decoded with the KV cache; the LM
head runs on the last position only; a row leaves the batch (and the cache) as soon as it stops, so a batch costs what
its answers need, not 30 steps for every row. Greedy by default (RWKU's protocol); sampling (temperature, top-p) with
its own seeded generator for the model's own texts. Written by hand because transformers' `generate` keeps decoding
finished rows until the longest is done (3.2× the needed row-steps on RWKU's probes, measured).
"""

from __future__ import annotations

import difflib
import inspect
import re

import torch
from transformers import DynamicCache

from ..distributed import is_sharded
from ..models import fast_bf16


def stop_ids(tokenizer, newline: bool = True) -> set[int]:
    """RWKU's stop tokens: EOS, "<|eot_id|>", and (for probe answers) the " \\n" and "\\n" tokens, where the
    vocabulary has them (an unknown token maps to the unknown id, as in RWKU's `convert_tokens_to_ids`)."""
    names = ["<|eot_id|>"] + ([" \n", "\n"] if newline else [])
    ids = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(n) for n in names}
    return {i for i in ids if isinstance(i, int)}


@torch.no_grad()
def decode(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    stop: set[int],
    batch_size: int = 16,
    add_special_tokens: bool = True,
    sample: dict | None = None,
    progress=None,
) -> list[list[int]]:
    """The generated token ids of each prompt, without the stop token that ended it.

    sample: None for greedy, or {"temperature", "top_p", "generator"} to sample."""
    device = next(model.parameters()).device
    encoded = tokenizer(prompts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    synced = is_sharded(model)  # FSDP: every process runs every forward, so the loop runs its full length
    cache_arg = _cache_arg(model)
    head = GreedyHead.of(model) if sample is None else None
    out: list[list[int]] = [[] for _ in prompts]
    for rows in _batches(encoded, batch_size):
        inputs = _first_step(model, [encoded[i] for i in rows], pad, cache_arg)
        cache, attn, position = inputs[cache_arg], inputs["attention_mask"], inputs["position_ids"]
        active = torch.arange(len(rows), device=device)  # index into `rows` of each row still decoding
        for _ in range(max_new_tokens):
            if head is not None:
                token = head(model.get_decoder()(**inputs, use_cache=True).last_hidden_state[:, -1])
            else:
                token = _next(model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1], sample)
            done = torch.zeros_like(token, dtype=torch.bool)
            for k, (row, t) in enumerate(zip(active.tolist(), token.tolist())):
                if t in stop:
                    done[k] = True
                else:
                    out[rows[row]].append(t)
                    done[k] = len(out[rows[row]]) >= max_new_tokens
            if done.all() and not synced:
                break
            keep = (~done).nonzero().squeeze(1) if not synced else torch.arange(len(active), device=device)
            if len(keep) < len(active):
                cache.batch_select_indices(keep)
            active, attn = active[keep], attn[keep]
            position = position[keep][:, -1:] + 1
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            inputs = {"input_ids": token[keep].unsqueeze(1), "attention_mask": attn, "position_ids": position}
            inputs[cache_arg] = cache
        if progress:
            progress(len(rows))
    return out


@torch.no_grad()
def next_token_logits(
    model, tokenizer, prompts: list[str], tokens: list[int], groups: list | None = None, batch_size: int = 8
) -> torch.Tensor:
    """Each prompt's next-token logits for `tokens` (float32, [len(prompts), len(tokens)]), for scoring
    multiple-choice questions (MMLU). Prompts of one group (an MMLU subject: the same 5-shot examples) are batched
    together and their shared prefix runs once, its keys and values copied to every row: MMLU's 300-question sample
    then forwards 6.1x fewer tokens than fixed batches of 8 with padding."""
    encoded = tokenizer(prompts, verbose=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_arg = _cache_arg(model)
    out = torch.empty(len(prompts), len(tokens))
    for rows in _batches(encoded, batch_size, groups):
        inputs = _first_step(model, [encoded[i] for i in rows], pad, cache_arg)
        out[rows] = model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, tokens].float().cpu()
    return out


def _cache_arg(model) -> str:
    """The forward's keyword for the KV cache: `cache` since transformers 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _batches(encoded: list[list[int]], batch_size: int, groups: list | None = None):
    """Row indices per batch. Prompts are sorted by token so that those sharing a prefix (an instruction, few-shot
    examples) are neighbours, and cut into runs that share ≥ MIN_PREFIX tokens: a run ends where the next prompt
    would keep less than half of its shared prefix, or (with `groups`) belongs to another group. Prompts that share
    no such prefix with a neighbour are pooled per group. Within a run, prompts go by length into batches: the prefix
    runs once per batch and the rows' own tokens are padded to the batch's longest. On Cindy Crawford's 150 official
    probes with the few-shot prompt this prefills 2.1× fewer tokens than batches of 32 cut in token order (1.4× at
    16, 1.4× zero-shot; embedded tokenizer); the evaluation benchmark went from 2.0× to 2.7× fixed-batch `generate`."""
    key = (lambda i: str(groups[i])) if groups else (lambda i: "")
    order = sorted(range(len(encoded)), key=lambda i: (key(i), encoded[i]))
    runs: list[list[int]] = []
    loose: dict[str, list[int]] = {}

    def close(run):
        if len(run) > 1:
            runs.append(run)
        else:
            loose.setdefault(key(run[0]), []).extend(run)

    run, shared = [], 0
    for i in order:
        if run:
            common = _shared_prefix([encoded[run[0]], encoded[i]])  # sorted: never above the run's own
            if common >= MIN_PREFIX and (len(run) == 1 or common >= shared / 2) and key(i) == key(run[0]):
                run.append(i)
                shared = common
                continue
            close(run)
        run, shared = [i], len(encoded[i])
    if run:
        close(run)
    for run in runs + list(loose.values()):
        run.sort(key=lambda i: len(encoded[i]))
        yield from (run[k : k + batch_size] for k in range(0, len(run), batch_size))


MIN_PREFIX = 16  # shorter shared prefixes (a BOS, a chat template's first tokens) are not worth an extra batch


def _first_step(model, rows: list[list[int]], pad: int, cache_arg: str) -> dict:
    """A batch's first forward inputs, with a fresh KV cache: the tokens every row starts with run once now (their
    keys and values copied to every row), each row's own tokens left-padded after them, positions continuing the
    prefix."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    shared = _shared_prefix(rows)
    if shared:
        prefix = torch.tensor([rows[0][:shared]], device=device)
        model(input_ids=prefix, **{cache_arg: cache}, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(rows))
    rest = [r[shared:] for r in rows]
    width = max(len(r) for r in rest)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
    position = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    attn = torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype, device=device), mask], dim=1)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": position, cache_arg: cache}


class GreedyHead:
    """The greedy token of a float32 LM head, computed in bf16 and made exact.

    On a CPU a decoding step is mostly the LM head (640 × 262k multiply-adds per row for the embedded model), and a
    bf16 matrix product runs it 4× faster there with avx512_bf16 (2× slower without, hence `fast_bf16`). bf16 logits
    can misorder close tokens, so the k best are recomputed in float32, and the result is accepted only when no other
    token can beat them: its bf16 logit plus the largest bf16 error (2^-7 ‖h‖ max‖w‖ for rounding the operands,
    2^-8 |logit| for the result) stays below the best exact one. A row that fails the check gets its full float32
    logits. Written by hand: no library does exact reduced-precision argmax."""

    K = 32

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias
        self.low = weight.to(torch.bfloat16)  # a copy per decode call: training may have changed the weights
        self.row_norm = float(weight.norm(dim=1).max())

    @classmethod
    def of(cls, model) -> GreedyHead | None:
        """For a float32 LM head on a CPU with fast bf16 (elsewhere the plain logits are as fast or faster)."""
        lm = model.get_output_embeddings()
        if lm is None or lm.weight.dtype != torch.float32 or lm.weight.device.type != "cpu" or not fast_bf16("cpu"):
            return None
        return cls(lm.weight, lm.bias)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        low = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.low, None).float()
        if self.bias is not None:
            low = low + self.bias
        top = low.topk(self.K, dim=-1)
        exact = torch.einsum("bd,bkd->bk", hidden, self.weight[top.indices])
        if self.bias is not None:
            exact = exact + self.bias[top.indices]
        best = exact.max(-1).values
        # among exact maxima the lowest token id, as argmax over all logits picks
        winner = torch.where(exact == best[:, None], top.indices, torch.iinfo(torch.long).max).min(-1).values
        error = 2**-7 * hidden.norm(dim=-1) * self.row_norm + 2**-8 * top.values[:, -1].abs() * 1.01 + 1e-6
        sure = top.values[:, -1] + error < best
        for row in (~sure).nonzero().flatten().tolist():  # too close to call in bf16: the float32 logits
            winner[row] = torch.nn.functional.linear(hidden[row], self.weight, self.bias).argmax()
        return winner


def _shared_prefix(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one of its own (its last position gives the logits)."""
    first, shortest = rows[0], min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == first[n] for r in rows):
        n += 1
    return n


NUCLEUS_CAP = 1024


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p: per row, the likeliest tokens in descending order (`index`) with their probabilities, zero past the
    smallest set that holds `top_p` of the mass. The nucleus is almost always within the 1,024 likeliest tokens:
    sorting all 262k entries each step, and sampling over them, made corpus generation take minutes per passage on a
    CPU; everything is sorted only when a row's nucleus is wider."""
    top, index = probs.topk(min(NUCLEUS_CAP, probs.shape[-1]), dim=-1)
    if (top.sum(-1) < top_p).any():
        top, index = probs.sort(dim=-1, descending=True)
    keep = top.cumsum(-1) - top < top_p
    return top * keep, index


def _next(logits: torch.Tensor, sample: dict | None) -> torch.Tensor:
    if sample is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sample["temperature"], dim=-1)
    sorted_probs, index = nucleus(probs, sample["top_p"])
    choice = torch.multinomial(sorted_probs.cpu(), 1, generator=sample["generator"]).to(logits.device)
    return index.gather(-1, choice).squeeze(-1)


def complete(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 30,
    batch_size: int = 16,
    newline_stop: bool = True,
    add_special_tokens: bool = True,
    progress=None,
) -> list[str]:
    """Greedy completions as RWKU's evaluation makes them: stop at EOS (and at a newline token for probe answers),
    decode without special tokens, strip."""
    ids = decode(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        stop_ids(tokenizer, newline_stop),
        batch_size,
        add_special_tokens,
        progress=progress,
    )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_corpus(
    model, tokenizer, name: str, n: int, max_new_tokens: int, seed: int, batch_size: int = 32
) -> list[str]:
    """RWKU's zero-shot setting: the model's own descriptions of the target, given only its name (sampled at
    temperature 0.8, top-p 0.95; passages under 10 words are dropped). All passages decode as one batch: on a CPU a
    step of 24 rows costs little more than a step of 8."""
    leads = [
        f"Please write a short biography of {name}.\n{name}",
        f"{name} is",
        f"Here is what is known about {name}:",
        f"The life and work of {name}.\n",
    ]
    prompts = [leads[i % len(leads)] for i in range(n)]
    sample = {"temperature": 0.8, "top_p": 0.95, "generator": torch.Generator().manual_seed(seed)}
    ids = decode(model, tokenizer, prompts, max_new_tokens, {tokenizer.eos_token_id}, batch_size, sample=sample)
    texts = [
        (prompt.split("\n")[-1] + tokenizer.decode(row, skip_special_tokens=True)).strip()
        for prompt, row in zip(prompts, ids)
    ]
    return [t for t in texts if len(t.split()) >= 10]


REWORD_PROMPT = (  # four hand-written pairs that change the sentence's structure, about no RWKU target
    "Rewrite each sentence in different words, keeping its meaning.\n"
    "Sentence: The river floods the valley every spring.\n"
    "Rewritten: Every spring, the valley is flooded by the river.\n"
    "Sentence: She wrote her first novel at the age of twenty, and it sold well.\n"
    "Rewritten: Her debut novel, written when she was twenty years old, was a commercial success.\n"
    "Sentence: The company opened its first store in Chicago in 1952.\n"
    "Rewritten: In 1952, Chicago became home to the firm's first shop.\n"
    "Sentence: He is best known for his role as a detective in a long-running crime series.\n"
    "Rewritten: A long-running crime show, in which he played a detective, made him famous.\n"
    "Sentence: {sentence}\n"
    "Rewritten:"
)


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 3}


def kept_rewording(sentence: str, rewording: str) -> bool:
    """A rewording worth training on: not a near-copy of its sentence (difflib ratio < 0.85), and about the same
    thing (≥ 30% of the sentence's content words; a small model otherwise drifts to other facts or copies a shot)."""
    words = _content_words(sentence)
    if not rewording or not words:
        return False
    shared = len(words & _content_words(rewording)) / len(words)
    return shared >= 0.3 and difflib.SequenceMatcher(None, sentence, rewording).ratio() < 0.85


def sentences(passage: str, min_words: int = 4) -> list[str]:
    """Rough cuts at . ! ? before a space, sentences of min_words or more: a full sentence splitter would add a
    dependency for text that only needs rough cuts."""
    parts = (s.strip() for s in re.split(r"(?<=[.!?])\s+", passage.strip()))
    return [s for s in parts if len(s.split()) >= min_words]


def reword_passages(model, tokenizer, passages: list[str], batch_size: int = 32, progress=None) -> list[str]:
    """The model's own rewording of each passage, sentence by sentence (greedy, a four-shot prompt; a small model
    copies or drifts on a whole passage), keeping only the rewordings `kept_rewording` accepts. A passage none of
    whose sentences is kept gives nothing. `progress(n)` is told of every n sentences done."""
    groups = [sentences(p) for p in passages]
    flat = [s for group in groups for s in group]
    ids = decode(
        model,
        tokenizer,
        [REWORD_PROMPT.format(sentence=s) for s in flat],
        64,
        stop_ids(tokenizer),
        batch_size,
        progress=progress,
    )
    rewordings = iter(tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids)
    out = []
    for group in groups:
        kept = [r for s in group if kept_rewording(s, r := next(rewordings))]
        if kept:
            out.append(" ".join(kept))
    return out
