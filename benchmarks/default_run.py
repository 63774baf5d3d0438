"""The README's main job, `atu unlearn` on the embedded defaults, timed as a user times it (wall clock of the whole
command, model loading included), N times, with what each run measured before and after unlearning.

    python benchmarks/default_run.py --runs 3              # extra arguments after -- go to `atu unlearn`
    python benchmarks/default_run.py --runs 1 -- run.mixed_precision=bf16

Results: benchmarks/results/default_run-cpu.json (medians and min-max; each run's phases from its metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, environment

from atu.evaluate.rwku import rescore

KEYS = ("forget_all", "neighbor_all", "retain_all", "forget_fb", "forget_qa", "forget_aa", "mia_fm", "mia_rm")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="default_run-cpu")
    parser.add_argument("--keep", help="keep each run folder as KEEP-<n>")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        out = Path(tempfile.mkdtemp()) / "run"
        start = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "atu.cli", "unlearn", f"run.output_dir={out}", *args.overrides],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if r.returncode != 0:
            sys.exit(f"run {i + 1} failed: {r.stderr[-2000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        stages = [x["stage"] for x in rows if x["event"] == "eval"]
        lenient = {  # the same answers under the lenient scorer (rouge-score, lower-cased), for the README
            stage: rescore(json.loads((out / "predictions" / f"{stage}.json").read_text()), "lenient")[0]
            for stage in (stages[0], stages[-1])
        }
        evals = [x for x in rows if x["event"] == "eval"]
        runs.append(
            {
                "wall_seconds": round(wall, 1),
                "run_seconds": json.loads((out / "run.json").read_text()).get("seconds"),
                "phases": {x["stage"]: x["seconds"] for x in rows if x["event"] == "stage_end"}
                | {f"{x['stage']} setup": x["setup_seconds"] for x in rows if "setup_seconds" in x}
                | {f"eval {x['stage']}": x["eval_seconds"] for x in evals},
                "before": {k: round(evals[0][k], 2) for k in KEYS if k in evals[0]},
                "after": {k: round(evals[-1][k], 2) for k in KEYS if k in evals[-1]},
                "before_lenient": {k: round(lenient[stages[0]][k], 2) for k in KEYS if k in lenient[stages[0]]},
                "after_lenient": {k: round(lenient[stages[-1]][k], 2) for k in KEYS if k in lenient[stages[-1]]},
                "prompt": evals[0]["prompt"],
                "scorer": evals[0]["scorer"],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
        if args.keep:
            shutil.move(str(out), f"{args.keep}-{i + 1}")
        shutil.rmtree(out.parent, ignore_errors=True)
    walls = [r["wall_seconds"] for r in runs]
    result = {
        "benchmark": "default_run",
        **environment(torch.device("cpu")),
        "command": "atu unlearn " + " ".join(args.overrides),
        "wall_seconds_median": statistics.median(walls),
        "wall_seconds_min_max": [min(walls), max(walls)],
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
