"""Greedy generation for scoring, and the model's own texts about a target (RWKU's zero-shot forget corpus)."""

from __future__ import annotations

import torch
from transformers import StoppingCriteriaList

from ..distributed import is_sharded


class _StopAtAnswerNewline:
    """Stop a row once its answer has started and then hit a newline (or EOS).

    RWKU stops at the first newline token; base models (no chat template) often emit a newline right after "Answer:"
    before answering, which would score an empty answer. Leading whitespace is therefore skipped, then we stop at '\n'.
    Written by hand: transformers' stop_strings stop at any newline, leading ones included.
    """

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], device=input_ids.device)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 30, progress=None
) -> list[str]:
    """Greedy completions, batched and left-padded; each is its first non-empty line."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
    outputs = [""] * len(prompts)
    tokenizer.padding_side = "left"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in idx],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not getattr(tokenizer, "chat_template", None),
        ).to(device)
        prompt_len = enc["input_ids"].shape[1]
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            stopping_criteria=StoppingCriteriaList([_StopAtAnswerNewline(tokenizer, prompt_len)]),
            pad_token_id=tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
            synced_gpus=is_sharded(model),
        )
        for row, i in enumerate(idx):
            text = tokenizer.decode(out[row, prompt_len:], skip_special_tokens=True)
            outputs[i] = text.strip().split("\n")[0].strip()
        if progress:
            progress(len(idx))
    return outputs


@torch.no_grad()
def generate_corpus(model, tokenizer, name: str, n: int, max_new_tokens: int, seed: int) -> list[str]:
    """RWKU's zero-shot setting: the model's own descriptions of the target, given only its name."""
    prompts = [
        f"Please write a short biography of {name}.\n{name}",
        f"{name} is",
        f"Here is what is known about {name}:",
        f"The life and work of {name}.\n",
    ]
    torch.manual_seed(seed)
    texts = []
    tokenizer.padding_side = "left"
    for start in range(0, n, 8):
        batch = [prompts[(start + i) % len(prompts)] for i in range(min(8, n - start))]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(next(model.parameters()).device)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            synced_gpus=is_sharded(model),
        )
        for row, prompt in enumerate(batch):
            cont = tokenizer.decode(out[row, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            lead = prompt.split("\n")[-1]
            texts.append((lead + cont).strip())
    return [t for t in texts if len(t.split()) >= 10]
