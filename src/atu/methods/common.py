"""Pieces several methods share: token batches with labels, per-sequence log-probabilities, the forward pass that stops
at a layer, LoRA wrapping, optimizers. One place for each, so a method file holds only its loss and what it trains."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import AtuError
from ..models import decoder_layers
from ..settings import setting
from .losses import upcast


def _fused_on_gpu(cls):
    """The optimizer class, with torch's fused (one-kernel) implementation when every parameter is on a GPU."""

    def make(params, **kwargs):
        params = list(params)
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        if tensors and all(p.is_cuda for p in tensors):
            kwargs.setdefault("fused", True)
        return cls(params, **kwargs)

    return make


OPTIMIZERS = {
    "sgd": _fused_on_gpu(torch.optim.SGD),
    "adam": _fused_on_gpu(torch.optim.Adam),
    "adamw": _fused_on_gpu(torch.optim.AdamW),
}
IGNORE = -100


# ------------------------------------------------------------------ the LLM up to a layer


def pick_layer(model, setting: str, value, fraction: float, lowest: int = 1) -> int:
    """A block index 1..n: `value`, or round(fraction × n) (at least `lowest`) when it is None; checked against n."""
    n = len(decoder_layers(model))
    layer = value if value is not None else max(lowest, round(fraction * n))
    if not lowest <= layer <= n:
        raise AtuError(f"{setting}={layer} is outside this model's {lowest}..{n} layers; pick one in range")
    return layer


class _StopForward(Exception):
    pass


def hidden_at(model, layer: int, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Residual stream after block `layer` (hidden_states[layer]), without running the blocks above or the LM head."""
    return hidden_at_layers(model, [layer], ids, attn)[0]


def hidden_at_layers(model, layers: list[int], ids: torch.Tensor, attn: torch.Tensor) -> list[torch.Tensor]:
    """hidden_at for each of `layers`, from one forward that stops after the highest of them."""
    store, top = {}, max(layers)

    def grab(layer):
        def hook(_module, _args, output):
            store[layer] = output[0] if isinstance(output, tuple) else output
            if layer == top:
                raise _StopForward

        return hook

    blocks = decoder_layers(model)
    handles = [blocks[layer - 1].register_forward_hook(grab(layer)) for layer in set(layers)]
    try:
        model(input_ids=ids, attention_mask=attn.long(), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [store[layer] for layer in layers]


def row_batches(data, batch_size: int):
    """The row indices of `data` (anything with ids) in consecutive batches of at most batch_size."""
    for start in range(0, len(data), batch_size):
        yield torch.arange(start, min(start + batch_size, len(data)), device=data.ids.device)


@torch.no_grad()
def cache_states(model, layer: int, data, batch_size: int) -> torch.Tensor:
    """hidden_at for every row of `data` (anything with ids, attn, lengths), zero-padded to data's full width."""
    out = None
    for rows in row_batches(data, batch_size):
        T = int(data.lengths[rows].max())
        h = hidden_at(model, layer, data.ids[rows, :T], data.attn[rows, :T])
        if out is None:
            out = torch.zeros(len(data), data.ids.shape[1], h.shape[-1], dtype=h.dtype, device=h.device)
        out[rows, :T] = h
    return out


# ------------------------------------------------------------------ token sequences with labels


@dataclass
class Sequences:
    """Right-padded token ids, attention mask and labels (IGNORE where no loss is taken)."""

    ids: torch.Tensor
    attn: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return self.ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.attn.sum(1)

    def batch(self, rows: torch.Tensor) -> "Sequences":
        T = int(self.lengths[rows].max())
        return Sequences(self.ids[rows, :T], self.attn[rows, :T], self.labels[rows, :T])


def _pack(rows: list[tuple[list[int], list[int]]], pad_id: int, device) -> Sequences:
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    attn = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (tok, lab) in enumerate(rows):
        ids[i, : len(tok)], labels[i, : len(lab)], attn[i, : len(tok)] = torch.tensor(tok), torch.tensor(lab), True
    return Sequences(ids.to(device), attn.to(device), labels.to(device))


def text_sequences(texts: list[str], tokenizer, max_length: int, device) -> Sequences:
    """Plain text, split (not truncated) into pieces of at most max_length tokens; every token is a label."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_length - len(bos)
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for start in range(0, len(ids), room):
            piece = bos + ids[start : start + room]
            rows.append((piece, [IGNORE] * len(bos) + piece[len(bos) :]))
    return _pack(rows, tokenizer.pad_token_id, device)


def prompt_answer_sequences(pairs: list[tuple[str, str]], tokenizer, max_length: int, device) -> Sequences:
    """Prompt + answer; only the answer's tokens (and EOS) are labels. Answers are cut to fit max_length."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows = []
    for prompt, answer in pairs:
        p = bos + tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        a = tokenizer(" " + answer.strip(), add_special_tokens=False, verbose=False)["input_ids"] + eos
        a = a[: max(1, max_length - len(p))]
        rows.append((p + a, [IGNORE] * len(p) + a))
    return _pack(rows, tokenizer.pad_token_id, device)


def token_logps(model, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | tokens < t) at every position from the first one any row labels, and the mask of those
    positions that carry a label. The LM head runs only there (logits_to_keep): on prompt-answer pairs (relearning,
    IDK, DPO) most positions are prompt, and a 262k-vocabulary head over them cost 1.0 of a relearning step's 3.5 s
    on the embedded model (benchmarks/relearn_step.py)."""
    labels = seqs.labels[:, 1:]
    labelled = (labels != IGNORE).any(0).nonzero()
    labels = labels[:, int(labelled[0]) if len(labelled) else -1 :]
    out = model(
        input_ids=seqs.ids, attention_mask=seqs.attn.long(), use_cache=False, logits_to_keep=labels.shape[1] + 1
    )
    logits = out.logits[:, :-1]
    mask = labels != IGNORE
    # cross_entropy on the flat view avoids materialising a second (batch, T, vocab) log-softmax tensor
    nll = F.cross_entropy(
        upcast(logits).reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none"
    )
    return -nll.view(labels.shape) * mask, mask


def sequence_logps(model, seqs: Sequences, average: bool = False) -> torch.Tensor:
    """Sum (or length-normalised mean) of label log-probabilities per sequence."""
    logps, mask = token_logps(model, seqs)
    total = logps.sum(1)
    return total / mask.sum(1).clamp(min=1) if average else total


@torch.no_grad()
def all_sequence_logps(model, seqs: Sequences, batch_size: int) -> torch.Tensor:
    """sequence_logps for every row, in batches: a frozen reference's values, computed once before training."""
    rows = torch.arange(len(seqs), device=seqs.ids.device)
    return torch.cat(
        [sequence_logps(model, seqs.batch(rows[i : i + batch_size])) for i in range(0, len(seqs), batch_size)]
    )


def mean_nll(model, seqs: Sequences) -> torch.Tensor:
    logps, mask = token_logps(model, seqs)
    return -logps.sum() / mask.sum().clamp(min=1)


def sample_rows(n: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randint(n, (k,), generator=gen).to(device)


# ------------------------------------------------------------------ LoRA

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """The LoRA switch every LM-training method's config carries (it inherits these fields): with `lora: true` only
    peft adapters train, and the saved model is the merged one (the adapter is kept beside it)."""

    lora: bool = setting(False, "train peft LoRA adapters instead of the weights")
    lora_r: int = setting(8, "LoRA rank", at_least=1)
    lora_alpha: int = setting(16, "LoRA alpha (the update is scaled by alpha / r)", above=0)
    lora_dropout: float = setting(0.0, "dropout on the LoRA input", at_least=0, at_most=1)
    lora_targets: list[str] = setting(list(LORA_TARGETS), "the linear layers that get adapters (those the model has)")


def add_lora(model, cfg: LoraSettings, blocks: list[int] | None = None):
    """Wrap `model` with peft LoRA adapters on cfg.lora_targets (in the given 0-based blocks only, when given).
    Returns the peft model; its base weights stay frozen."""
    from peft import LoraConfig, get_peft_model  # loaded only when LoRA is asked for (it imports much of transformers)

    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_modules(cfg, model),
        layers_to_transform=blocks,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads the attribute transformers 5 renamed; the warning is not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def lora_modules(cfg: LoraSettings, model) -> list[str]:
    """The names in cfg.lora_targets that this model has (checked before a run starts)."""
    present = {
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    chosen = [t for t in cfg.lora_targets if t in present]
    if not chosen:
        raise AtuError(
            f"method.lora_targets={list(cfg.lora_targets)} names no linear layer of this model; pick some of "
            f"{', '.join(sorted(present)[:8])}"
        )
    return chosen


def lora_params(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def merged(model):
    """The model to save: a peft model's adapters merged into its weights (a plain HF model), anything else as is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def count_parameters(params) -> int:
    return sum(p.numel() for p in params)
