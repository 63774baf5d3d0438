"""The zero-shot forget corpus (RWKU's setting for a target without one): wall time to generate it with atu's decoder
(sampling, KV cache, rows leaving the batch at EOS) against transformers' `generate` (the previous implementation:
batches of 8, every row decoded until the longest is done), same prompts, lengths and sampling settings.

    python benchmarks/corpus.py                    # CPU, embedded gemma-3-270m, 24 passages of up to 160 tokens

Results: benchmarks/results/corpus-<device>-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import environment, load_models, result_path, sync

from atu.evaluate import generate_corpus


def generate_hf(model, tokenizer, name: str, n: int, max_new_tokens: int, seed: int) -> list[str]:
    """The previous implementation, kept here as the baseline: transformers' generate, 8 rows at a time."""
    leads = [
        f"Please write a short biography of {name}.\n{name}",
        f"{name} is",
        f"Here is what is known about {name}:",
        f"The life and work of {name}.\n",
    ]
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    texts = []
    for start in range(0, n, 8):
        batch = [leads[(start + i) % len(leads)] for i in range(min(8, n - start))]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, prompt in enumerate(batch):
            cont = tokenizer.decode(out[row, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            texts.append((prompt.split("\n")[-1] + cont).strip())
    return [t for t in texts if len(t.split()) >= 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--target", default="Leonardo da Vinci")
    parser.add_argument("--passages", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="time atu's decoder only (generate is slow)")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, tok, _, _ = load_models(args.model, "embedded", device, torch.float32)
    rows = {}
    variants = (("atu_decoder", generate_corpus),) + ((("generate", generate_hf),) if not args.no_baseline else ())
    for label, fn in variants:
        times, texts = [], []
        for seed in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            texts = fn(model, tok, args.target, args.passages, args.new_tokens, seed)
            sync(device)
            times.append(time.perf_counter() - start)
        words = [len(t.split()) for t in texts]
        rows[label] = {
            "seconds": [round(t, 1) for t in times],
            "seconds_median": round(statistics.median(times), 1),
            "seconds_min_max": [round(min(times), 1), round(max(times), 1)],
            "passages_kept": len(texts),
            "words_median": statistics.median(words) if words else 0,
            "example": texts[0] if texts else "",
        }
        print(label, rows[label]["seconds"], flush=True)
    result = {
        "benchmark": "corpus",
        **environment(device),
        "model": args.model,
        "settings": vars(args),
        **rows,
        "speedup_median": round(rows["generate"]["seconds_median"] / rows["atu_decoder"]["seconds_median"], 1)
        if "generate" in rows
        else None,
    }
    path = result_path("corpus", device, args.model)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
