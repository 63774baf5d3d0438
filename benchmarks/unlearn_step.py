"""ATU's unlearning step: tokens/s and MFU against the reference-style step, same model, same batch.

  reference  full forward with every hidden state and the logits, head on hidden_states[L], hinge loss, backward, SGD
             over all parameters (the reference code's step)
  truncated  the forward stops at block L (no blocks above, no logits), SGD over blocks 1..L: atu's step, plain
  ours       truncated + bf16/fused optimizer (where torch has one) + torch.compile of the blocks run

MFU = 6 × parameters of the layers run (blocks 1..L, plus the embedding lookup's zero FLOPs) × tokens / step time /
the device's dense bf16 peak (--peak-tflops; H100/H200 SXM: 989). On a CPU the MFU column is left empty (no peak).

    python benchmarks/unlearn_step.py                                 # CPU, embedded gemma-3-270m, batch 4 × 128
    python benchmarks/unlearn_step.py --device cuda --model phi3-shape --dtype bfloat16 --batch 16 --length 256

Not yet run on a GPU by us (no GPU in the sessions so far): the GPU rows of benchmarks/results/ come from whoever runs
this command on one. Results: benchmarks/results/unlearn_step-<device>-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import environment, load_models, result_path, sync

from atu.head import EmbeddingHead
from atu.methods.atu import unlearn_loss
from atu.methods.common import hidden_at
from atu.models import decoder_layers


def block_parameters(model, layer: int) -> int:
    return sum(p.numel() for block in decoder_layers(model)[:layer] for p in block.parameters())


def make_step(variant: str, model, head, layer: int, concept, ids, attn, valid, lr: float, device, dtype):
    blocks = [p for block in decoder_layers(model)[:layer] for p in block.parameters()]
    params = list(model.parameters()) if variant == "reference" else blocks
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    fused = {"fused": True} if variant == "ours" and device.type == "cuda" else {}
    opt = torch.optim.SGD(params, lr=lr, **fused)
    forward = hidden_at
    if variant == "ours" and device.type == "cuda":
        for block in decoder_layers(model)[:layer]:
            block.compile()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if variant == "reference":
                out = model(input_ids=ids, attention_mask=attn.long(), output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[layer]
            else:
                hidden = forward(model, layer, ids, attn)
            loss = unlearn_loss(head(hidden), concept, valid, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--variants", default="reference,truncated,ours")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, tok, encoder, layer = load_models(args.model, "embedded", device, dtype)
    vocab = model.config.get_text_config().vocab_size
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.length), device=device)
    attn = torch.ones_like(ids, dtype=torch.bool)
    valid = attn.clone()
    d_model = model.config.get_text_config().hidden_size
    head = EmbeddingHead(d_model, 384, 256, 2, 4, dropout=0.0).to(device).eval().requires_grad_(False)
    concept = torch.nn.functional.normalize(torch.randn(384, device=device), dim=0)
    tokens = args.batch * args.length
    flops = 6 * block_parameters(model, layer) * tokens
    rows = {}
    for variant in args.variants.split(","):
        step = make_step(variant, model, head, layer, concept, ids, attn, valid, 1e-9, device, dtype)
        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.steps):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows[variant] = {
            "step_seconds_median": round(median, 4),
            "step_seconds_min_max": [round(min(times), 4), round(max(times), 4)],
            "tokens_per_second": round(tokens / median),
            "mfu_layers_run": round(flops / median / (args.peak_tflops * 1e12), 3) if device.type == "cuda" else None,
            "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
            if device.type == "cuda"
            else None,
        }
        print(variant, rows[variant], flush=True)
    result = {
        "benchmark": "unlearn_step",
        **environment(device),
        "model": args.model,
        "dtype": args.dtype,
        "hook_layer": layer,
        "parameters_of_layers_run": block_parameters(model, layer),
        "tokens": tokens,
        "settings": vars(args),
        **rows,
    }
    if "reference" in rows and "ours" in rows:
        result["speedup_ours_vs_reference"] = round(
            rows["reference"]["step_seconds_median"] / rows["ours"]["step_seconds_median"], 2
        )
    path = result_path("unlearn_step", device, args.model)
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
