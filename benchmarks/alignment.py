"""Alignment: the reference algorithm against ours, same data, same seed, same precision; how long each takes to bring
the head to the same loss on held-out windows, and where the difference comes from.

The reference algorithm, written from DESIGN.md §2 (not from its code): the head is a transformer *decoder* whose
cross-attention reads the head's own input sequence with no mask (post-LN, 768 wide, 6 layers, 8 heads, dropout 0.1,
a causal mask on its self-attention), Adam at lr 1e-4, and every step re-runs the frozen LLM (full forward with all
hidden states and the logits) and the frozen sentence encoder on the k-token window of every position. Ours: atu's
defaults (method/atu.yaml: the strictly causal encoder head, its width and learning rate), encoder targets of every
distinct window computed once per run and hook-layer states once per alignment stage, set-up time counted.

Variants, to explain the speed-up one gain at a time (each: head, learning rate, recompute or cached):
  reference      decoder head, lr 1e-4, recompute       (the reference algorithm)
  cache          decoder head, lr 1e-4, cached           (caching alone: the same steps, each cheaper)
  head           our head,     lr 1e-4, cached           (+ our head)
  lr             decoder head, our lr,  cached           (+ our learning rate, with the reference head)
  ours           our head,     our lr,  cached           (atu)
Held-out loss: 1 − cos on the windows of passages no variant trains on, every --eval-every steps (not timed). The
target is the reference's held-out loss after --ref-steps; each variant's time to reach it is reported.

    python benchmarks/alignment.py                    # CPU, embedded gemma-3-270m + MiniLM
    python benchmarks/alignment.py --device cuda --model phi3-shape --encoder mpnet-shape --dtype bfloat16 \\
        --batch 16 --max-length 256 --ref-steps 200  # GPU: Phi-3-mini-shaped random model

Results: benchmarks/results/alignment-<device>-<model>.json and .png (the held-out curves against wall time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import matplotlib
import torch
from common import environment, load_models, result_path, sync
from torch import nn

from atu import data as datalib
from atu.config import load_config
from atu.head import EmbeddingHead
from atu.methods.atu import Batchable, align_loss, make_chunks
from atu.methods.common import cache_states

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class ReferenceHead(nn.Module):
    """The reference's head as DESIGN §2 describes it: Linear -> 6-layer transformer decoder (post-LN) whose memory is
    its own input, unmasked (so position t also reads t+1...), causal self-attention -> Linear."""

    def __init__(self, d_model: int, d_out: int, width: int = 768, layers: int = 6, heads: int = 8, dropout=0.1):
        super().__init__()
        self.inp = nn.Linear(d_model, width)
        block = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=False)
        self.blocks = nn.TransformerDecoder(block, layers)
        self.out = nn.Linear(width, d_out)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.inp(hidden.to(self.out.weight.dtype))
        causal = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device, dtype=x.dtype)
        return self.out(self.blocks(x, x, tgt_mask=causal, tgt_is_causal=True))


def split_texts(target: str, n: int, held_out: int) -> tuple[list[str], list[str]]:
    """Alignment text as ATU mixes it (the target's corpus and three other targets'); the last passages held out."""
    texts = list(datalib.load_target(target).forget_corpus[: n // 2])
    for other in datalib.other_targets(target, 3, [], 0):
        texts += other.forget_corpus[: n // 6]
    texts = texts[: n + held_out]
    return texts[:-held_out], texts[-held_out:]


def make_head(kind: str, d_model: int, d_out: int, ours, device):
    if kind == "decoder":
        return ReferenceHead(d_model, d_out).to(device)
    return EmbeddingHead(
        d_model, d_out, ours.head_width, ours.head_layers, ours.head_heads, dropout=ours.head_dropout
    ).to(device)


@torch.no_grad()
def held_out_loss(head, held: Batchable, batch: int) -> float:
    head.eval()
    total, count = 0.0, 0
    for start in range(0, len(held), batch):
        rows = torch.arange(start, min(start + batch, len(held)), device=held.ids.device)
        _, _, valid, targets = held.batch(rows)
        n = int(valid.sum())
        total += float(align_loss(head(held.states[rows, : valid.shape[1]]), targets, valid)) * n
        count += n
    head.train()
    return total / count


def run(
    variant: str,
    spec: dict,
    model,
    encoder,
    layer,
    tok,
    train: list[str],
    held: Batchable,
    args,
    ours,
    device,
    target_loss: float | None,
):
    """Train one variant; returns its step times, training losses and (seconds, held-out loss) points."""
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    encode = lambda ws: torch.as_tensor(
        encoder.encode(ws, batch_size=512, convert_to_numpy=True, show_progress_bar=False)
    )
    chunks = make_chunks(train, tok, encoder.tokenizer, args.window, args.max_length)
    if spec["cached"]:
        data = Batchable(chunks, encode, tok.pad_token_id, device)  # every distinct window encoded once per run
        data.states = cache_states(model, layer, data, args.batch)  # hook-layer states once per stage
    else:  # the reference's batches carry ids and masks only; targets and states are recomputed every step
        data = Batchable(chunks, lambda ws: torch.zeros(len(ws), 1), tok.pad_token_id, device)
    sync(device)
    setup = time.perf_counter() - start
    d_out = encoder.get_sentence_embedding_dimension()
    head = make_head(spec["head"], model.config.get_text_config().hidden_size, d_out, ours, device)
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=spec["lr"])
    gen = torch.Generator().manual_seed(args.seed)
    timed, steps, losses, curve = setup, [], [], [(setup, held_out_loss(head, held, args.batch))]
    limit = args.ref_steps if variant in ("reference", "cache") else args.max_steps
    for step in range(limit):
        t0 = time.perf_counter()
        rows = torch.randint(len(data), (args.batch,), generator=gen).to(device)
        ids, attn, valid, targets = data.batch(rows)
        if spec["cached"]:
            hidden = data.states[rows, : valid.shape[1]]
        else:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=attn.long(), output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[layer]
                windows = [
                    chunks[r].windows[t]
                    for r in rows.tolist()
                    for t in range(ids.shape[1])
                    if t < len(chunks[r].windows) and chunks[r].windows[t] is not None
                ]
                targets = torch.zeros(ids.shape[0], ids.shape[1], d_out, device=device)
                targets[valid] = encode(windows).to(device).float()
        loss = align_loss(head(hidden), targets, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sync(device)
        steps.append(time.perf_counter() - t0)
        timed += steps[-1]
        losses.append(loss.item())
        if (step + 1) % args.eval_every == 0:
            curve.append((timed, held_out_loss(head, held, args.batch)))
            if target_loss is not None and curve[-1][1] <= target_loss:
                break
    return {
        "setup_seconds": round(setup, 2),
        "steps": len(steps),
        "seconds": round(timed, 2),
        "step_seconds_median": round(statistics.median(steps), 4),
        "step_seconds_min_max": [round(min(steps), 4), round(max(steps), 4)],
        "train_losses": [round(x, 5) for x in losses],
        "held_out": [[round(t, 2), round(v, 5)] for t, v in curve],
    }


def seconds_to(curve, target: float):
    return next((t for t, v in curve if v <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded", help="embedded | phi3-shape | a model directory")
    parser.add_argument("--encoder", default="embedded", help="embedded | mpnet-shape")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--target", default="Warren Buffett")
    parser.add_argument("--passages", type=int, default=96, help="passages trained on")
    parser.add_argument("--held-out", type=int, default=16, help="passages whose windows measure the head")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--window", type=int, default=None, help="default: atu's method.window_tokens")
    parser.add_argument("--ref-steps", type=int, default=80)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    ours = load_config(["method=atu"]).method  # the shipped defaults
    args.window = args.window or ours.window_tokens
    model, tok, encoder, layer = load_models(args.model, args.encoder, device, getattr(torch, args.dtype))
    train, held_texts = split_texts(args.target, args.passages, args.held_out)
    encode = lambda ws: torch.as_tensor(
        encoder.encode(ws, batch_size=512, convert_to_numpy=True, show_progress_bar=False)
    )
    held = Batchable(
        make_chunks(held_texts, tok, encoder.tokenizer, args.window, args.max_length), encode, tok.pad_token_id, device
    )
    held.states = cache_states(model, layer, held, args.batch)
    specs = {
        "reference": {"head": "decoder", "lr": 1e-4, "cached": False},
        "cache": {"head": "decoder", "lr": 1e-4, "cached": True},
        "head": {"head": "ours", "lr": 1e-4, "cached": True},
        "lr": {"head": "decoder", "lr": float(ours.align_lr), "cached": True},
        "ours": {"head": "ours", "lr": float(ours.align_lr), "cached": True},
    }
    results, target = {}, None
    for variant, spec in specs.items():
        print(f"{variant}: {spec}", flush=True)
        results[variant] = {
            **spec,
            **run(
                variant,
                spec,
                model,
                encoder,
                layer,
                tok,
                train,
                held,
                args,
                ours,
                device,
                None if variant in ("reference", "cache") else target,
            ),
        }
        if variant == "reference":
            target = results["reference"]["held_out"][-1][1]
        results[variant]["seconds_to_reference_held_out_loss"] = seconds_to(results[variant]["held_out"], target)
        done = results[variant]
        print(
            f"  {done['steps']} steps, {done['seconds']} s, held-out {done['held_out'][-1][1]}, "
            f"to target {done['seconds_to_reference_held_out_loss']}",
            flush=True,
        )
    ref_time = results["reference"]["seconds_to_reference_held_out_loss"]
    speedup = {
        v: round(ref_time / r["seconds_to_reference_held_out_loss"], 1)
        for v, r in results.items()
        if r["seconds_to_reference_held_out_loss"]
    }
    result = {
        "benchmark": "alignment",
        **environment(device),
        "model": args.model,
        "encoder": args.encoder,
        "dtype": args.dtype,
        "hook_layer": layer,
        "settings": vars(args),
        "reference": {
            "head": "decoder (post-LN, cross-attention on its own input, unmasked)",
            "width": 768,
            "layers": 6,
            "heads": 8,
            "dropout": 0.1,
            "lr": 1e-4,
            "recompute": True,
            "llm_forward": "full, all hidden states and logits",
            "precision": args.dtype,
        },
        "ours_config": {
            k: ours[k]
            for k in ("head_width", "head_layers", "head_heads", "head_dropout", "align_lr", "window_tokens")
        },
        "target_held_out_loss": target,
        "speedup_time_to_target": speedup,
        "speedup_per_step_caching": round(
            results["reference"]["step_seconds_median"] / results["cache"]["step_seconds_median"], 1
        ),
        "variants": results,
    }
    path = result_path("alignment", device, args.model)
    path.write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=1))
    print(f"written: {path}")


def plot(result: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, r in result["variants"].items():
        ts, vs = zip(*r["held_out"])
        ax.plot(
            ts,
            vs,
            "-o" if variant in ("reference", "ours") else ":",
            ms=3,
            label=f"{variant} ({r['head']} head, lr {r['lr']:g}, {'cached' if r['cached'] else 'recompute'})",
        )
    ax.axhline(result["target_held_out_loss"], color="gray", ls="--", lw=1, label="reference's final held-out loss")
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log; set-up included)")
    ax.set_ylabel("held-out alignment loss (1 − cos)")
    ax.set_title(
        f"Alignment on {result['device_name']}: {result['speedup_time_to_target'].get('ours')}× to equal loss"
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
