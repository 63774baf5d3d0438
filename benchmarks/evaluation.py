"""Evaluation: probes per second of our batched RWKU evaluation (left-padded greedy generation, many probes per
forward) against batch-1 generation, on the same probes, same model, same settings (greedy, 30 new tokens).

    python benchmarks/evaluation.py                      # CPU, embedded gemma-3-270m, 48 probes
    python benchmarks/evaluation.py --device cuda --model phi3-shape --dtype bfloat16 --batch 64 --probes 256

Results: benchmarks/results/evaluation-<device>-<model>.json (medians and min-max over --repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import environment, load_models, result_path, sync

from atu import data as datalib
from atu.evaluate import evaluate_target


def probes_subset(target: str, n: int) -> dict:
    """n probes spread over the target's probe sets (forget and neighbour), in file order."""
    probes = datalib.load_target(target).probes
    keys = sorted(probes)
    out, i = {k: [] for k in keys}, 0
    while sum(len(v) for v in out.values()) < n and any(len(out[k]) < len(probes[k]) for k in keys):
        k = keys[i % len(keys)]
        if len(out[k]) < len(probes[k]):
            out[k].append(probes[k][len(out[k])])
        i += 1
    return {k: v for k, v in out.items() if v}


def timed(model, tok, probes, batch, new_tokens, device, repeats):
    times, records = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        _, records = evaluate_target(model, tok, probes, batch, new_tokens)
        sync(device)
        times.append(time.perf_counter() - start)
    return times, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--target", default="Warren Buffett")
    parser.add_argument("--probes", type=int, default=48)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, tok, _, _ = load_models(args.model, "embedded", device, dtype)
    probes = probes_subset(args.target, args.probes)
    n = sum(len(v) for v in probes.values())
    evaluate_target(model, tok, {k: v[:2] for k, v in probes.items()}, args.batch, 4)  # warm-up
    rows = {}
    for label, batch in (("batched", args.batch), ("batch_1", 1)):
        print(f"{label}: {n} probes, batch {batch}", flush=True)
        times, records = timed(model, tok, probes, batch, args.new_tokens, device, args.repeats)
        rows[label] = {
            "batch": batch,
            "seconds": [round(t, 2) for t in times],
            "probes_per_second_median": round(n / statistics.median(times), 2),
            "probes_per_second_min_max": [round(n / max(times), 2), round(n / min(times), 2)],
            "answers": [r["prediction"] for r in records],
        }
    same = sum(a == b for a, b in zip(rows["batched"]["answers"], rows["batch_1"]["answers"]))
    result = {
        "benchmark": "evaluation",
        **environment(device),
        "model": args.model,
        "dtype": args.dtype,
        "settings": vars(args),
        "probes": n,
        **rows,
        "speedup_median": round(
            rows["batched"]["probes_per_second_median"] / rows["batch_1"]["probes_per_second_median"], 1
        ),
        "identical_answers": f"{same}/{n}",
    }
    path = result_path("evaluation", device, args.model)
    path.write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("batched", "batch_1")}
            | {k: {x: y for x, y in rows[k].items() if x != "answers"} for k in rows},
            indent=1,
        )
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
