"""ATU's default unlearning step on the embedded model, float32 against bf16 autocast, and one forward over the forget
and retain batches against two: forward, backward and optimizer seconds (median and min-max over repeats).

    python benchmarks/step_precision.py            # batch 4 × 128 forget + 4 × 128 retain, blocks 1..16, Adam

Results: benchmarks/results/step_precision-cpu-embedded.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import environment, load_models, result_path

from atu.head import EmbeddingHead
from atu.methods.atu import unlearn_loss
from atu.methods.common import hidden_at
from atu.methods.losses import relative_drift
from atu.models import decoder_layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    model, _, encoder, layer = load_models("embedded", "embedded:all-minilm-l6-v2", device, torch.float32)
    params = [p for block in decoder_layers(model)[:layer] for p in block.parameters()]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(0)
    d = model.config.get_text_config().hidden_size
    head = EmbeddingHead(d, encoder.get_sentence_embedding_dimension(), 256, 2, 4, dropout=0.1).eval()
    head.requires_grad_(False)
    concept = torch.randn(encoder.get_sentence_embedding_dimension())
    shape = (args.batch, args.length)
    ids, rids = torch.randint(100, 20000, shape), torch.randint(100, 20000, shape)
    attn = torch.ones(shape, dtype=torch.bool)
    with torch.no_grad():
        reference = hidden_at(model, layer, rids, attn)
    opt = torch.optim.Adam(params, lr=3e-6)

    def step(joint: bool, bf16: bool) -> list[float]:
        opt.zero_grad(set_to_none=True)
        t = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if joint:
                both = hidden_at(model, layer, torch.cat([ids, rids]), torch.cat([attn, attn]))
                h, hr = both[: args.batch], both[args.batch :]
            else:
                h, hr = hidden_at(model, layer, ids, attn), hidden_at(model, layer, rids, attn)
            loss = unlearn_loss(head(h), concept, attn, -1.0) + 30 * relative_drift(hr, reference, attn)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:])]

    rows = {}
    for joint in (False, True):
        for bf16 in (False, True):
            label = f"{'one forward' if joint else 'two forwards'}, {'bf16 autocast' if bf16 else 'float32'}"
            step(joint, bf16)  # warm-up
            parts = [step(joint, bf16) for _ in range(args.repeats)]
            total = [sum(p) for p in parts]
            rows[label] = {
                "seconds_median": round(statistics.median(total), 2),
                "seconds_min_max": [round(min(total), 2), round(max(total), 2)],
                "forward_backward_optimizer_median": [round(statistics.median(c), 2) for c in zip(*parts)],
            }
            print(label, rows[label], flush=True)
    result = {
        "benchmark": "step_precision",
        **environment(device),
        "hook_layer": layer,
        "settings": vars(args),
        **rows,
    }
    path = result_path("step_precision", device, "embedded")
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
