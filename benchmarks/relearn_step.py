"""One relearning step (the `relearn` attack: full fine-tuning on forget QA pairs) on the embedded model: the loss with
the LM head on every position against the head from the first answer position on (`token_logps`), and Adam's update.
Seconds per part, median and min-max over repeats.

    python benchmarks/relearn_step.py            # Cindy Crawford's first 4 forget QA pairs, zero-shot prompts

Results: benchmarks/results/relearn_step-cpu-embedded.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import environment, load_models, result_path

from atu import data as datalib
from atu.evaluate.rwku import build_prompt
from atu.methods.common import IGNORE, mean_nll, prompt_answer_sequences


def full_head_nll(model, seqs) -> torch.Tensor:
    """The loss as token_logps computed it before: logits at every position."""
    logits = model(input_ids=seqs.ids, attention_mask=seqs.attn.long(), use_cache=False).logits[:, :-1]
    labels = seqs.labels[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    return nll


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Cindy Crawford")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cpu")
    model, tok, _, _ = load_models("embedded", "embedded:all-minilm-l6-v2", device, torch.float32)
    probes = datalib.load_target(args.target).probes["forget_qa"][: args.batch]
    seqs = prompt_answer_sequences([(build_prompt(p, tok), p.answer) for p in probes], tok, 256, device)
    model.requires_grad_(True)  # load_models returns a frozen model; relearning trains every weight
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    times: dict[str, list[float]] = {"full_head_loss": [], "answer_head_loss": [], "adam_step": []}
    losses = {}
    for _ in range(args.repeats):
        for name, loss_fn in (("full_head_loss", full_head_nll), ("answer_head_loss", mean_nll)):
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = loss_fn(model, seqs)
            loss.backward()
            times[name].append(time.perf_counter() - t0)
            losses[name] = loss.item()
        t0 = time.perf_counter()
        opt.step()
        times["adam_step"].append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
    result = {
        "benchmark": "relearn_step",
        **environment(device),
        "settings": {**vars(args), "tokens": int(seqs.attn.sum()), "labelled": int((seqs.labels != IGNORE).sum())},
        "losses_last_repeat": {k: round(v, 5) for k, v in losses.items()},
        **{
            k: {
                "seconds_median": round(statistics.median(v), 3),
                "seconds_min_max": [round(min(v), 3), round(max(v), 3)],
            }
            for k, v in times.items()
        },
    }
    path = result_path("relearn_step", device, "embedded")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
