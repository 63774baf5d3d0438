"""What each robustness lever of docs/robustness.md costs per ATU unlearning step, through the method's own stage and
the engine (the code a run executes), on the embedded model with ATU's defaults (batch 4 × up to 128 tokens).

  plain      ATU's unlearning step
  sam        method.sam_rho: a second forward and backward at the weights moved uphill
  latent     method.latent_eps: the latent adversary's method.latent_steps ascent steps before the step
  saliency   method.saliency_rows: the same step with masked gradients (and, once per run, the row selection)
  reword     data.reword_forget: the model's rewording of the forget passages, once per run (seconds per passage)

    OMP_NUM_THREADS=1 python benchmarks/levers.py                    # CPU, embedded gemma-3-270m, Paris Hilton

Results: benchmarks/results/levers-<device>-<model>.json (median and min–max seconds per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
from omegaconf import OmegaConf

from common import environment, result_path

from atu import data as datalib
from atu.config import load_config
from atu.engine import run_stages
from atu.evaluate import reword_passages
from atu.methods import RunContext, get_method, method_config
from atu.models import load_encoder, load_lm

LEVERS = {
    "plain": {},
    "sam": {"sam_rho": 0.05},
    "latent": {"latent_eps": 0.1},
    "saliency": {"saliency_rows": 0.01},  # last: its gradient masks stay on the weights
}


def timed_steps(method, settings: dict, steps: int) -> dict:
    for key, value in settings.items():
        setattr(method.cfg, key, value)
    stage = next(s for s in method.stages() if s.kind == "unlearn")
    started = time.perf_counter()
    info = stage.setup()  # once, as in a run; each timed call below is one step
    setup = time.perf_counter() - started
    one = dataclasses.replace(stage, steps=1, setup=lambda: info)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        started = time.perf_counter()
        run_stages([one], method.modules(), lambda s, i: None, lambda r: None)
        times.append(time.perf_counter() - started)
    times = times[1:]
    for key in settings:
        setattr(method.cfg, key, type(getattr(method.cfg, key))(0))
    return {
        "step_seconds_median": round(statistics.median(times), 3),
        "step_seconds_min_max": [round(min(times), 3), round(max(times), 3)],
        "setup_seconds": round(setup, 1),
        "settings": settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="Paris Hilton")
    parser.add_argument("--passages", type=int, default=8, help="forget passages (and as many of one other target)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per lever (after one warm-up)")
    parser.add_argument("--align-steps", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config([])
    device = torch.device("cpu")
    model, tok = load_lm(cfg.model, device)
    encoder = load_encoder(cfg.encoder, device)
    target = datalib.load_target(args.target)
    other = datalib.other_targets(args.target, 1, [], 0)[0]
    forget = target.forget_corpus[: args.passages]
    ctx = RunContext(
        model=model,
        tokenizer=tok,
        encoder=encoder,
        device=device,
        target=target,
        target_name=target.name,
        forget_texts=forget,
        retain_texts=other.forget_corpus[: args.passages],
        other_targets=[other.name],
        max_length=cfg.data.max_length,
        infer_batch_size=cfg.eval.batch_size,
    )
    method_cfg = method_config(OmegaConf.merge(cfg.method, {"align_steps": args.align_steps}))
    method = get_method("atu")(method_cfg, ctx)
    method.prepare()
    run_stages(method.stages()[:1], method.modules(), lambda s, i: None, lambda r: None)  # a head to unlearn with
    rows = {}
    for name, settings in LEVERS.items():
        rows[name] = timed_steps(method, settings, args.steps)
        print(name, rows[name], flush=True)
    for name in ("sam", "latent", "saliency"):
        rows[name]["cost_vs_plain"] = round(
            rows[name]["step_seconds_median"] / rows["plain"]["step_seconds_median"], 2
        )
    started = time.perf_counter()
    kept = reword_passages(model, tok, forget, cfg.eval.batch_size)
    seconds = time.perf_counter() - started
    rows["reword"] = {
        "seconds": round(seconds, 1),
        "seconds_per_passage": round(seconds / len(forget), 1),
        "passages_with_a_kept_rewording": f"{len(kept)} of {len(forget)}",
    }
    print("reword", rows["reword"], flush=True)
    result = {
        "benchmark": "levers",
        **environment(device),
        "model": cfg.model.name_or_path,
        "target": args.target,
        "method": "atu defaults (src/atu/config/method/atu.yaml)",
        "settings": vars(args),
        **rows,
    }
    path = result_path("levers", device, "embedded")
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
