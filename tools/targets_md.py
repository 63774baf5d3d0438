"""Write docs/targets.md from `atu targets --out` results: the few-shot screen of all targets, and optionally a
zero-shot screen of some of them for the prompt comparison.

    atu targets --out few.json run.threads=1
    atu targets --out zero.json eval.prompt=zero_shot --set <names...>
    python tools/targets_md.py few.json [zero.json] --seconds 1234 --zero-seconds 321 [--split]

--split also writes the dev and test target sets (src/atu/data/target_sets/dev.yaml, test.yaml) by the rule of
`split()`, fixed before any method was run on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KNOWN = 15.0  # `atu compare`'s rule for a target the model knows (compare.KNOWN)
SETS = Path(__file__).resolve().parents[1] / "src" / "atu" / "data" / "target_sets"
RULE = (
    "the targets the embedded model knows (few-shot FB/QA score >= 15 in docs/targets.md), sorted by RWKU id, "
    "alternate between dev and test, starting with dev"
)


def rwku_ids() -> dict[str, int]:
    from atu import data as datalib

    return {
        datalib.folder_target_name(f): int(f.name.split("_", 1)[0])
        for folders in datalib.target_folders().values()
        for f in folders
        if datalib.FOLDER_NAME.match(f.name)
    }


def split(rows: list[dict]) -> tuple[list[str], list[str]]:
    """Dev targets (any tuning, any number of runs) and test targets (reported only): the rule in RULE."""
    ids = rwku_ids()
    known = sorted((r["target"] for r in rows if r["score"] >= KNOWN), key=lambda name: ids[name])
    return known[0::2], known[1::2]


def write_split(rows: list[dict], source: str) -> tuple[list[str], list[str]]:
    dev, test = split(rows)
    ids = rwku_ids()
    for name, targets, use in (
        ("dev", dev, "choose settings on these, as often as needed"),
        ("test", test, "report on these, never tune"),
    ):
        (SETS / f"{name}.yaml").write_text(
            f"# {name} targets ({use}): {RULE}.\n# Made by tools/targets_md.py --split from {source}.\n"
            f"ids: [{', '.join(str(ids[t]) for t in targets)}]  # {', '.join(targets)}\n"
        )
    return dev, test


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("few")
    parser.add_argument("zero", nargs="?")
    parser.add_argument("--seconds", type=float, required=True, help="wall time of the few-shot screen")
    parser.add_argument("--zero-seconds", type=float)
    parser.add_argument("--out", default="docs/targets.md")
    parser.add_argument("--preface", help="a Markdown file whose text goes after the opening paragraph")
    parser.add_argument("--split", action="store_true", help="also write the dev and test target sets")
    parser.add_argument("--contended", action="store_true", help="the screen shared the machine with other jobs")
    args = parser.parse_args()
    few = json.loads(Path(args.few).read_text())
    rows = sorted(few["targets"], key=lambda r: -r["score"])
    known = [r for r in rows if r["score"] >= KNOWN]
    probes = sum(r["n_probes"] for r in rows)
    prompt = f"few-shot ({few['settings']['shots']})" if few["settings"]["shots"] else "zero-shot"
    median = statistics.median(r["score"] for r in rows)
    lines = [
        "# Which targets does the embedded model know?",
        "",
        "Measured with `atu targets --out targets.json run.threads=1` on the embedded gemma-3-270m (fp32), one CPU",
        f"thread, {len(rows)} targets, {probes} official forget FB and QA probes, {args.seconds / 60:.0f} min wall",
        "time" + (" (the machine's cores were shared with other jobs: an upper bound)" if args.contended else ""),
        f"(prompt: {prompt},",
        f"scorer: {few['settings']['scorer']}, RWKU's reference ROUGE-L recall ×100). *Known* is the FB and QA means",
        "weighted by RWKU's global counts (forget-all without AA); `atu compare` counts a target as known at ≥ 15.",
        f"*Off-format* is the share of answers that are empty or off-format (`docs/evaluation.md`). {len(known)} of",
        f"{len(rows)} targets are known by that rule; the median target scores {median:.1f}.",
        "",
    ]
    if args.preface:
        lines += [Path(args.preface).read_text().strip(), ""]
    if args.split:
        dev, test = write_split(rows, args.few)
        score = {r["target"]: r["score"] for r in rows}
        lines += [
            "## Dev and test targets",
            "",
            f"The rule, fixed before any method ran on them: {RULE}. Dev targets are for choosing settings (any",
            "number of runs); test targets are only reported. Named sets: `atu compare --target dev`, `--target test`",
            "(`src/atu/data/target_sets/`). Which settings were chosen on which runs: `docs/tuning.md`.",
            "",
            "| set | targets (known score) |",
            "|---|---|",
            f"| dev ({len(dev)}) | {', '.join(f'{t} ({score[t]:.1f})' for t in dev)} |",
            f"| test ({len(test)}) | {', '.join(f'{t} ({score[t]:.1f})' for t in test)} |",
            "",
        ]
    if args.zero:
        zero = {r["target"]: r for r in json.loads(Path(args.zero).read_text())["targets"]}
        both = [r for r in rows if r["target"] in zero]
        mean = lambda xs: statistics.fmean(xs) if xs else 0.0
        lines += [
            "## Few-shot against zero-shot (RWKU's prompt)",
            "",
            f"The same probes of {len(both)} targets asked with RWKU's zero-shot prompt (`eval.prompt=zero_shot`,",
            f"{(args.zero_seconds or 0) / 60:.0f} min):",
            "",
            "| prompt | mean known score | mean off-format or empty % | targets ≥ 15 |",
            "|---|---:|---:|---:|",
            f"| few-shot (3) | {mean([r['score'] for r in both]):.1f} | {mean([r['off_format'] for r in both]):.1f} | "
            f"{sum(r['score'] >= KNOWN for r in both)} |",
            f"| zero-shot | {mean([zero[r['target']]['score'] for r in both]):.1f} | "
            f"{mean([zero[r['target']]['off_format'] for r in both]):.1f} | "
            f"{sum(zero[r['target']]['score'] >= KNOWN for r in both)} |",
            "",
            "| Target | few-shot | zero-shot | off-format % few / zero |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['target']} | {r['score']:.1f} | {zero[r['target']]['score']:.1f} | "
            f"{r['off_format']:.0f} / {zero[r['target']]['off_format']:.0f} |"
            for r in both
        ]
        lines.append("")
    lines += [
        "## All targets",
        "",
        "| # | Target | Known | FB | QA | Probes | Off-format % | Example (query -> answer) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rows):
        example = r["examples"][0].replace("|", "/").replace("\n", " ") if r["examples"] else ""
        lines.append(
            f"| {i + 1} | {r['target']} | {r['score']:.1f} | {r.get('forget_fb', 0):.1f} "
            f"| {r.get('forget_qa', 0):.1f} | {r['n_probes']} | {r['off_format']:.0f} | {example} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(rows)} targets, {len(known)} known")


if __name__ == "__main__":
    main()
