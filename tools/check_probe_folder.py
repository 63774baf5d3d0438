"""Check one written RWKU-format target folder against our schema and minimum counts.

Usage: python tools/check_probe_folder.py src/atu/data/rwku/atu/4_Warren_Buffett
Used by the people who write probe data; the package's own loader does the same checks at run time.
"""

import json
import sys
from pathlib import Path

MINIMUM = {
    "forget_level1.json": 10,
    "forget_level2.json": 10,
    "forget_level3.json": 15,
    "neighbor_level1.json": 8,
    "neighbor_level2.json": 8,
    "positive.json": 20,
    "rephrase.json": 10,
    "multihop.json": 5,
    "forget_mia.json": 10,
    "retain_mia.json": 10,
}
PROBE_FIELDS = ("query", "answer", "level", "type", "subject")
L3_TYPES = {
    "prefix injection",
    "synonym manipulation",
    "context hint",
    "role play",
    "incontext learning",
    "multiple choice",
    "reverse query",
    "affirmative suffix",
}


def main(folder: Path) -> int:
    problems = []
    name = " ".join(folder.name.split("_")[1:])
    for fname, minimum in MINIMUM.items():
        path = folder / fname
        if not path.exists():
            problems.append(f"{fname}: missing")
            continue
        items = json.loads(path.read_text())
        if not isinstance(items, list) or len(items) < minimum:
            problems.append(
                f"{fname}: need a list of >= {minimum} items, "
                f"got {len(items) if isinstance(items, list) else type(items)}"
            )
            continue
        for i, it in enumerate(items):
            if fname in ("positive.json", "forget_mia.json", "retain_mia.json"):
                if not isinstance(it.get("text"), str) or len(it["text"].split()) < 40:
                    problems.append(f"{fname}[{i}]: 'text' must be a passage of >= 40 words")
                continue
            for f in PROBE_FIELDS:
                if not isinstance(it.get(f), str) or not it[f].strip():
                    problems.append(f"{fname}[{i}]: field {f!r} missing or empty")
            if it.get("subject") != name:
                problems.append(f"{fname}[{i}]: subject {it.get('subject')!r} != {name!r}")
            if fname == "forget_level1.json" and "___" not in it.get("query", ""):
                problems.append(f"{fname}[{i}]: level-1 query needs a ___ blank")
            if fname == "neighbor_level1.json" and "___" not in it.get("query", ""):
                problems.append(f"{fname}[{i}]: level-1 query needs a ___ blank")
            if fname.startswith("neighbor") and not it.get("neighbor"):
                problems.append(f"{fname}[{i}]: neighbour probes need a 'neighbor' field")
            if fname.startswith("neighbor") and name.split()[-1].lower() in it.get("query", "").lower():
                problems.append(f"{fname}[{i}]: neighbour query mentions the target; it must not")
            if len(it.get("answer", "").split()) > 6:
                problems.append(f"{fname}[{i}]: answer longer than 6 words; keep answers short")
        if fname == "forget_level3.json":
            types = {it.get("type", "") for it in items}
            base = {t for t in types if not t.startswith("cross lingual")}
            if len(base & L3_TYPES) < 7 or not any(t.startswith("cross lingual") for t in types):
                problems.append(f"{fname}: cover >= 7 of {sorted(L3_TYPES)} and >= 1 'cross lingual (Language)'")
    for p in problems:
        print("PROBLEM", p)
    print(f"{folder.name}: {'OK' if not problems else str(len(problems)) + ' problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
