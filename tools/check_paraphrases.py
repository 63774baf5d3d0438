"""Check a target's paraphrase set (rephrase.json): every item paraphrases one of the target's official forget probes
(FB or QA), keeps its answer, and is not a near-copy of it.

    python tools/check_paraphrases.py src/atu/data/rwku/atu/4_Warren_Buffett [--roots /path/to/RWKU/Target]

A near-copy shares too much wording with its original (ROUGE-L F1 over lower-cased words above MAX_OVERLAP, the
blank "___" removed) or gives the answer away (the answer's words inside the question). Exit status 1 with one line
per problem; "OK (n paraphrases)" otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from atu import data as datalib

MAX_OVERLAP = 0.6
FIELDS = ("query", "answer", "level", "type", "subject", "original")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("___", " "))


def overlap(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts' lower-cased words (the longest common subsequence)."""
    x, y = words(a), words(b)
    if not x or not y:
        return 0.0
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, u in enumerate(x):
        for j, v in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if u == v else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    return 2 * lcs / (len(x) + len(y))


def problems(folder: Path, roots: list[str]) -> tuple[list[str], int]:
    path = folder / "rephrase.json"
    if not path.exists():
        return [f"{path}: missing"], 0
    items = json.loads(path.read_text())
    name = datalib.folder_target_name(folder)
    target = datalib.load_target(name, roots)
    official = {p.query: p for key in ("forget_fb", "forget_qa") for p in target.probes.get(key, [])}
    every_query = {p.query for key, ps in target.probes.items() if key != "rephrase" for p in ps}  # ours aside
    out, seen = [], set()
    for i, it in enumerate(items):
        where = f"{path.name} item {i}"
        missing = [f for f in FIELDS if not isinstance(it.get(f), str) or not it[f].strip()]
        if missing:
            out.append(f"{where}: missing {', '.join(missing)}")
            continue
        original = official.get(it["original"])
        if original is None:
            out.append(f"{where}: 'original' is not one of {name}'s official FB/QA probes")
            continue
        if it["answer"] != original.answer:
            out.append(f"{where}: answer {it['answer']!r} differs from the original's {original.answer!r}")
        if it["subject"] != target.name or it["level"] != "2" or it["type"] != "paraphrase":
            out.append(f"{where}: subject must be {target.name!r}, level '2', type 'paraphrase'")
        if it["query"] in every_query or it["query"] in seen:
            out.append(f"{where}: the query repeats a probe word for word")
        score = overlap(it["query"], original.query)
        if score > MAX_OVERLAP:
            out.append(
                f"{where}: near-copy of its original (word overlap {score:.2f} > {MAX_OVERLAP}): {it['query']!r}"
            )
        answer = words(it["answer"])
        if answer and " ".join(answer) in " ".join(words(it["query"])):
            out.append(f"{where}: the question contains its answer {it['answer']!r}")
        seen.add(it["query"])
    return out, len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--roots", action="append", default=[], help="folders of RWKU target folders (official)")
    args = parser.parse_args()
    status = 0
    for folder in args.folders:
        found, n = problems(folder, args.roots)
        for line in found:
            print(f"{folder.name}: {line}")
        if found:
            status = 1
        else:
            print(f"{folder.name}: OK ({n} paraphrases)")
    return status


if __name__ == "__main__":
    sys.exit(main())
