"""Alignment: the reference algorithm against ours (same data, seed and precision); time to reach the same head loss.

Reference (Spohn et al.'s code, as DESIGN.md §2 describes it): each step re-runs the frozen LLM (full forward, all
hidden states and the logits) and the frozen sentence encoder on the k-token window of every position, then trains the
paper's head (width 768, 6 layers, 8 heads, dropout 0.1) with Adam at lr 1e-4.
Ours (atu's defaults): encoder targets of every distinct window computed once per run, hook-layer states once per
alignment stage, then only the head trains (our default head and lr, from method/atu.yaml). Set-up time is counted.

The speed-up is the reference's time to its final (smoothed) loss over ours to the same loss. Results:
benchmarks/results/alignment-<device>-<model>.json and a PNG of both loss curves.

    python benchmarks/alignment.py                                    # CPU, embedded gemma-3-270m + MiniLM
    python benchmarks/alignment.py --device cuda --model phi3-shape --encoder mpnet-shape --ref-steps 200 \\
        --batch 16 --max-length 256 --dtype bfloat16                  # GPU: Phi-3-mini-shaped random model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import environment, load_models, result_path, sync, texts_for

from atu.head import EmbeddingHead
from atu.methods.atu import Batchable, align_loss, make_chunks
from atu.methods.common import cache_states


def smoothed(losses: list[float], window: int = 5) -> list[float]:
    return [statistics.fmean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]


def head_step(head, opt, hidden, targets, valid, device, dtype) -> float:
    """One alignment step of the head, as atu's engine takes it (Adam, clip 1.0); the same for both algorithms."""
    head.train()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = align_loss(head(hidden), targets, valid)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
    opt.step()
    sync(device)
    return loss.item()


def run_reference(model, encoder, layer, chunks, data, d_out, args, device, dtype):
    torch.manual_seed(args.seed)
    head = EmbeddingHead(model.config.get_text_config().hidden_size, d_out, 768, 6, 8, dropout=0.1).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    losses, times = [], []
    start = time.perf_counter()
    for _ in range(args.ref_steps):
        rows = torch.randint(len(data), (args.batch,), generator=gen)
        ids, attn, valid, _ = data.batch(rows.to(device))
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(input_ids=ids, attention_mask=attn.long(), output_hidden_states=True, use_cache=False)
            hidden = out.hidden_states[layer]
            windows = [
                chunks[r].windows[t]
                for r in rows.tolist()
                for t in range(ids.shape[1])
                if t < len(chunks[r].windows) and chunks[r].windows[t] is not None
            ]
            emb = torch.as_tensor(
                encoder.encode(windows, batch_size=512, convert_to_numpy=True, show_progress_bar=False)
            ).to(device)
        targets = torch.zeros(ids.shape[0], ids.shape[1], d_out, device=device)
        targets[valid] = emb.float()
        losses.append(head_step(head, opt, hidden, targets, valid, device, dtype))
        times.append(time.perf_counter() - start)
        del out
    return losses, times


def run_ours(model, encoder, layer, texts, tok, args, device, dtype, target_loss: float):
    from omegaconf import OmegaConf

    from atu.config import load_config

    atu_cfg = load_config(["method=atu"]).method  # our shipped defaults
    start = time.perf_counter()
    encode = lambda ws: torch.as_tensor(
        encoder.encode(ws, batch_size=512, convert_to_numpy=True, show_progress_bar=False)
    )
    chunks = make_chunks(texts, tok, encoder.tokenizer, args.window, args.max_length)
    data = Batchable(chunks, encode, tok.pad_token_id, device)  # every distinct window encoded once per run
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        data.states = cache_states(model, layer, data, args.batch)  # hook-layer states once per stage
    sync(device)
    setup = time.perf_counter() - start
    torch.manual_seed(args.seed)
    head = EmbeddingHead(
        model.config.get_text_config().hidden_size,
        data.targets.shape[-1],
        atu_cfg.head_width,
        atu_cfg.head_layers,
        atu_cfg.head_heads,
        dropout=atu_cfg.head_dropout,
    ).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=atu_cfg.align_lr)
    gen = torch.Generator().manual_seed(args.seed)
    losses, times = [], []
    for _ in range(args.max_steps):
        rows = torch.randint(len(data), (args.batch,), generator=gen).to(device)
        _, _, valid, targets = data.batch(rows)
        losses.append(head_step(head, opt, data.states[rows, : valid.shape[1]], targets, valid, device, dtype))
        times.append(time.perf_counter() - start)
        if len(losses) >= 5 and smoothed(losses)[-1] <= target_loss:
            break
    config = {k: atu_cfg[k] for k in ("head_width", "head_layers", "head_heads", "head_dropout", "align_lr")}
    return losses, times, setup, data, chunks, OmegaConf.to_container(OmegaConf.create(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded", help="embedded | phi3-shape | a model directory")
    parser.add_argument("--encoder", default="embedded", help="embedded | mpnet-shape")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--target", default="Warren Buffett")
    parser.add_argument("--passages", type=int, default=64, help="forget + other targets' passages aligned on")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--ref-steps", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    model, tok, encoder, layer = load_models(args.model, args.encoder, device, dtype)
    texts = texts_for(args.target, args.passages)
    chunks_ref = make_chunks(texts, tok, encoder.tokenizer, args.window, args.max_length)
    # the reference's batches carry ids and masks only; its targets come from the encoder at every step
    data_ref = Batchable(chunks_ref, lambda ws: torch.zeros(len(ws), 1), tok.pad_token_id, device)
    d_out = encoder.get_sentence_embedding_dimension()

    print(f"reference: {args.ref_steps} steps", flush=True)
    ref_losses, ref_times = run_reference(model, encoder, layer, chunks_ref, data_ref, d_out, args, device, dtype)
    target_loss = smoothed(ref_losses)[-1]
    print(f"reference: smoothed loss {target_loss:.4f} after {ref_times[-1]:.1f} s; ours until it", flush=True)
    ours_losses, ours_times, setup, data, _, ours_config = run_ours(
        model, encoder, layer, texts, tok, args, device, dtype, target_loss
    )
    reached = smoothed(ours_losses)[-1] <= target_loss
    ref_step = statistics.median(b - a for a, b in zip([0.0] + ref_times, ref_times))
    ours_step = statistics.median(b - a for a, b in zip(ours_times, ours_times[1:])) if len(ours_times) > 1 else None
    result = {
        "benchmark": "alignment",
        **environment(device),
        "model": args.model,
        "encoder": args.encoder,
        "dtype": args.dtype,
        "hook_layer": layer,
        "settings": vars(args),
        "sequences": len(data),
        "target": args.target,
        "reference": {
            "head": {"width": 768, "layers": 6, "heads": 8, "dropout": 0.1, "lr": 1e-4},
            "steps": len(ref_losses),
            "seconds": round(ref_times[-1], 2),
            "step_seconds_median": round(ref_step, 4),
            "step_seconds_min_max": [
                round(min(b - a for a, b in zip([0.0] + ref_times, ref_times)), 4),
                round(max(b - a for a, b in zip([0.0] + ref_times, ref_times)), 4),
            ],
            "final_smoothed_loss": round(target_loss, 5),
            "losses": ref_losses,
        },
        "ours": {
            "head": ours_config,
            "setup_seconds": round(setup, 2),
            "steps": len(ours_losses),
            "seconds_to_reference_loss": round(ours_times[-1], 2) if reached else None,
            "reached_reference_loss": reached,
            "step_seconds_median": round(ours_step, 4) if ours_step else None,
            "final_smoothed_loss": round(smoothed(ours_losses)[-1], 5),
            "losses": ours_losses,
        },
    }
    result["speedup_time_to_loss"] = round(ref_times[-1] / ours_times[-1], 1) if reached else None
    result["speedup_per_step"] = round(ref_step / ours_step, 1) if ours_step else None
    path = result_path("alignment", device, args.model)
    path.write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("reference", "ours")}
            | {
                "reference_seconds": result["reference"]["seconds"],
                "ours_seconds": result["ours"]["seconds_to_reference_loss"],
                "ours_setup_seconds": result["ours"]["setup_seconds"],
            },
            indent=1,
        )
    )
    print(f"written: {path}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ref, ours = result["reference"], result["ours"]
    ax.plot(range(1, len(ref["losses"]) + 1), ref["losses"], label=f"reference ({ref['seconds']:.0f} s)")
    label = f"ours ({ours['seconds_to_reference_loss']} s incl. {ours['setup_seconds']} s set-up)"
    ax.plot(range(1, len(ours["losses"]) + 1), ours["losses"], label=label)
    ax.axhline(ref["final_smoothed_loss"], color="gray", ls=":", label="reference's final loss (smoothed)")
    ax.set_xlabel("head step")
    ax.set_ylabel("alignment loss (1 − cos)")
    ax.set_title(
        f"Alignment, {result['model']} on {result['device_name']}: {result['speedup_time_to_loss']}× to equal loss"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
