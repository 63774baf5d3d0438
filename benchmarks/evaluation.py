"""Evaluation speed: probes per second of atu's decoder (prompts sorted by length into batches, KV cache, the LM head
on the last position only, rows leaving the batch as they stop) against transformers' `generate` at batch 1 and at a
fixed batch in file order (what RWKU's and open-unlearning's evaluation do), on the same official probes with the
same prompts (the evaluation's default for the model), greedy, 30 new tokens, RWKU's stop tokens. The answers of the
three are compared token for token.

    python benchmarks/evaluation.py                      # CPU, embedded gemma-3-270m, 96 official probes
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
from omegaconf import OmegaConf

from atu import data as datalib
from atu.evaluate import build_prompt, decode, prompt_shots
from atu.evaluate.generation import stop_ids


def probe_prompts(targets: list[str], n: int, tokenizer, shots: int) -> list[str]:
    """The first n forget and neighbour probes of the targets, in file order, as the evaluation asks them."""
    prompts = []
    for name in targets:
        for probes in datalib.load_target(name).probes.values():
            prompts += [build_prompt(p, tokenizer, shots=shots) for p in probes]
    return prompts[:n]


def generate(model, tokenizer, prompts, batch, max_new_tokens, stop):
    """transformers' generate, `batch` prompts at a time in the given order, cut at the first stop token."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i : i + batch], return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop),
            pad_token_id=tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
        )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            out.append(row[: next((k for k, t in enumerate(row) if t in stop), len(row))])
    return out


def timed(fn, device, repeats):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--targets", default="Warren Buffett,Karl Marx,Confucius")
    parser.add_argument("--probes", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch1-repeats", type=int, default=1, help="batch-1 generate is slow: fewer repeats")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, tok, _, _ = load_models(args.model, "embedded", device, dtype)
    shots = prompt_shots(OmegaConf.create({"prompt": "auto", "shots": 3}), tok)
    prompts = probe_prompts(args.targets.split(","), args.probes, tok, shots)
    stop = stop_ids(tok)
    decode(model, tok, prompts[:4], 4, stop, 4)  # warm-up
    modes = {
        "atu_decoder": (lambda: decode(model, tok, prompts, args.new_tokens, stop, args.batch), args.repeats),
        "generate_fixed_batch": (
            lambda: generate(model, tok, prompts, args.batch, args.new_tokens, stop),
            args.repeats,
        ),
        "generate_batch_1": (lambda: generate(model, tok, prompts, 1, args.new_tokens, stop), args.batch1_repeats),
    }
    rows, answers = {}, {}
    for label, (fn, repeats) in modes.items():
        print(f"{label}: {len(prompts)} probes", flush=True)
        times, answers[label] = timed(fn, device, repeats)
        rows[label] = {
            "seconds": [round(t, 2) for t in times],
            "probes_per_second_median": round(len(prompts) / statistics.median(times), 2),
            "probes_per_second_min_max": [round(len(prompts) / max(times), 2), round(len(prompts) / min(times), 2)],
        }
    ours = rows["atu_decoder"]["probes_per_second_median"]

    def same(other):
        return sum(a == b for a, b in zip(answers["atu_decoder"], other))

    generated = [len(a) for a in answers["atu_decoder"]]
    result = {
        "benchmark": "evaluation",
        **environment(device),
        "model": args.model,
        "dtype": args.dtype,
        "settings": vars(args) | {"prompt": f"few-shot ({shots})" if shots else "zero-shot"},
        "probes": len(prompts),
        "answer_tokens_mean": round(statistics.fmean(generated), 1),
        **rows,
        "speedup_vs_batch_1": round(ours / rows["generate_batch_1"]["probes_per_second_median"], 1),
        "speedup_vs_fixed_batch": round(ours / rows["generate_fixed_batch"]["probes_per_second_median"], 1),
        "identical_to_batch_1": f"{same(answers['generate_batch_1'])}/{len(prompts)}",
        "identical_to_fixed_batch": f"{same(answers['generate_fixed_batch'])}/{len(prompts)}",
    }
    path = result_path("evaluation", device, args.model)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
