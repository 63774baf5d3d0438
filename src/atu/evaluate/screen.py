"""`atu targets`: how much does a model know about each target? Used to pick targets worth unlearning.

Targets with probe files are scored on their forget probes (FB/QA/AA). Names that have only RWKU's one-line intro get
two generic reverse probes built from it (the intro with the name blanked out, and as a "who is this" question):
a model that names the person from their description knows them.
"""

from __future__ import annotations

import re

from .. import data as datalib
from .. import metrics
from .rwku import evaluate_target


def intro_probes(name: str, intro: str) -> list[datalib.Probe]:
    pattern = re.compile(re.escape(name), re.IGNORECASE)
    if not pattern.search(intro):
        return []
    blanked = pattern.sub("___", intro, count=1)
    described = pattern.sub("this person", intro, count=1)
    described = described[0].upper() + described[1:]
    return [
        datalib.Probe(blanked, name, "1", "cloze", name),
        datalib.Probe(f"{described} Who is this person?", name, "2", "reverse query", name),
    ]


def screen(model, tokenizer, names: list[str], roots=(), batch_size: int = 16, use_intro: bool = True) -> list[dict]:
    probes, source = {}, {}
    for name in names:
        target = datalib.load_target(name, roots)
        forget = {k: v for k, v in target.probes.items() if k in metrics.FORGET}
        if forget:
            for key, items in forget.items():
                probes[(name, key)] = items
            source[name] = "probes"
        elif use_intro and target.intro:
            items = intro_probes(name, target.intro)
            if items:
                probes[(name, "intro")] = items
                source[name] = "intro"
    keyed = {f"{n}\t{k}": v for (n, k), v in probes.items()}
    _, records = evaluate_target(model, tokenizer, keyed, batch_size, 30)
    rows: dict[str, dict] = {}
    for r in records:
        name = r["set"].split("\t")[0]
        row = rows.setdefault(name, {"target": name, "source": source[name], "scores": [], "examples": []})
        row["scores"].append(r["score"])
        if len(row["examples"]) < 2:
            row["examples"].append(f"{r['query'][:60]} -> {r['prediction'][:40]}")
    out = []
    for row in rows.values():
        scores = row.pop("scores")
        out.append({**row, "n_probes": len(scores), "score": sum(scores) / len(scores)})
    return sorted(out, key=lambda r: -r["score"])
