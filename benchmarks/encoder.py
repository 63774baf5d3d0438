"""ATU's one-off encoding of every k-token window: float32 against bf16 autocast (`encoder.precision`), same windows.

Reports windows/s (median and min-max over repeats) and how far the bf16 embeddings are from the float32 ones
(cosine per window: minimum and mean), which is what decides whether bf16 may be the default.

    python benchmarks/encoder.py                      # CPU, embedded all-MiniLM-L6-v2, Warren Buffett's windows
    python benchmarks/encoder.py --encoder mpnet      # the paper's encoder, if installed

Results: benchmarks/results/encoder-<device>-<encoder>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import environment, result_path, sync

from atu import data as datalib
from atu.methods.atu import make_chunks
from atu.models import gemma_tokenizer, load_encoder, prepare_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="embedded:all-minilm-l6-v2")
    parser.add_argument("--target", default="Warren Buffett")
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--window-tokens", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    from omegaconf import OmegaConf

    name = {"mpnet": "embedded:all-mpnet-base-v2", "minilm": "embedded:all-minilm-l6-v2"}.get(
        args.encoder, args.encoder
    )
    enc = load_encoder(OmegaConf.create({"name_or_path": name, "batch_size": args.batch}), device)
    tok = gemma_tokenizer()
    prepare_tokenizer(tok)
    texts = datalib.load_target(args.target).forget_corpus[: args.passages]
    chunks = make_chunks(texts, tok, enc.tokenizer, args.window_tokens, 128)
    windows = sorted({w for c in chunks for w in c.windows if w is not None})

    def encode(bf16: bool):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = enc.encode(windows, batch_size=args.batch, convert_to_tensor=True, show_progress_bar=False)
        sync(device)
        return out.float().cpu()

    rows, outputs = {}, {}
    for label, bf16 in (("float32", False), ("bf16", True)):
        encode(bf16)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[label] = encode(bf16)
            times.append(time.perf_counter() - start)
        rows[label] = {
            "seconds": [round(t, 2) for t in times],
            "windows_per_second_median": round(len(windows) / statistics.median(times), 1),
            "windows_per_second_min_max": [round(len(windows) / max(times), 1), round(len(windows) / min(times), 1)],
        }
        print(label, rows[label], flush=True)
    cos = torch.nn.functional.cosine_similarity(outputs["float32"], outputs["bf16"], dim=-1)
    result = {
        "benchmark": "encoder",
        **environment(device),
        "encoder": args.encoder,
        "settings": vars(args),
        "windows": len(windows),
        **rows,
        "speedup_median": round(
            rows["bf16"]["windows_per_second_median"] / rows["float32"]["windows_per_second_median"], 2
        ),
        "cosine_bf16_vs_float32": {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)},
    }
    path = result_path("encoder", device, args.encoder.split(":")[-1])
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
