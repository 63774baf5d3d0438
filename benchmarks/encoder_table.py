"""The table of benchmarks/encoder_choice.sh: per configuration and target, forget/neighbour/retain before and after,
the alignment stage's time per step, the whole comparison's wall time and peak memory (GNU time -v).

    python benchmarks/encoder_table.py runs/encoders   # Markdown; benchmarks/results/encoder_choice-cpu-embedded.json
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import torch
from common import result_path

from atu.runs import Run

KEYS = ("forget_all", "retain_all")


def gnu_time(path: Path) -> dict:
    text = path.read_text() if path.exists() else ""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    seconds = None
    if wall:
        h, m, s = wall.groups()
        seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    return {"wall_seconds": seconds, "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None}


def stage_seconds(run_dir: Path, stage: str) -> float | None:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("stage") == stage and "kind" in row and "seconds" in row:
            return row["seconds"]
    return None


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/encoders")
    rows = []
    for config in sorted(p for p in folder.iterdir() if (p / "compare.csv").exists()):
        timing = gnu_time(folder / f"{config.name}.time")
        table = list(csv.DictReader((config / "compare.csv").open()))
        for target in dict.fromkeys(r["target"] for r in table):
            mine = [r for r in table if r["target"] == target and r["method"] == "atu"]
            before, after = mine[0], mine[-1]
            run_dir = Path(after["run_dir"])
            info = json.loads((run_dir / "run.json").read_text())
            align_s = stage_seconds(run_dir, "align")
            align_steps = Run(run_dir).config().method.align_steps
            rows.append(
                {
                    "config": config.name,
                    "target": target,
                    **{f"{k}_before": round(float(before[k]), 1) for k in KEYS if before.get(k)},
                    **{f"{k}_after": round(float(after[k]), 1) for k in KEYS if after.get(k)},
                    "thresholds": [round(float(r["tau"]), 3) for r in mine if r.get("tau")],
                    "align_seconds_per_step": round(align_s / align_steps, 2) if align_s else None,
                    "run_seconds": info.get("seconds"),
                    **timing,
                }
            )
    path = result_path("encoder_choice", torch.device("cpu"), "embedded")
    # configurations measured in earlier sessions (run folders since deleted) stay unless re-measured here
    fresh = {(r["config"], r["target"]) for r in rows}
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in earlier if (r["config"], r["target"]) not in fresh] + rows
    head = "| configuration | target | forget-all | retain-all | τ used | align s/step | run s |"
    print(head + "\n|" + "---|" * 7)
    for r in rows:
        cells = [
            f"{r.get(k + '_before', '–')} → {r.get(k + '_after', '–')}" for k in KEYS
        ]  # before → after of the last stage
        taus = ", ".join(f"{t:.2f}" for t in r["thresholds"])
        print(
            f"| {r['config']} | {r['target']} | " + " | ".join(cells) + f" | {taus} | {r['align_seconds_per_step']} |"
            f" {r['run_seconds']} |"
        )
    memory = {r["config"]: r["peak_rss_gib"] for r in rows}
    print("\npeak memory (GiB, whole comparison):", memory)
    path.write_text(json.dumps({"benchmark": "encoder_choice", "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
