"""`atu targets`: how much does a model know about each target? Used to pick targets worth unlearning.

Each target is scored on its forget FB and QA probes (RWKU's official ones for its 200 targets), with the evaluation's
prompt and scorer; its "known" score is the two level means weighted by RWKU's global counts (the forget-all
weighting without AA). A name with no probes (a user's new target) gets two generic probes built from a one-line
intro: the intro with the name blanked out, and a "who is this" question.
"""

from __future__ import annotations

import re
import statistics

from .. import data as datalib
from .. import metrics
from .rwku import evaluate_target

SETS = ("forget_fb", "forget_qa")


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


def probes_of(name: str, roots=()) -> tuple[dict[str, list[datalib.Probe]], str]:
    """The probes a target is screened on, and where they come from ("probes" or "intro")."""
    target = datalib.load_target(name, roots, allow_new=True)
    found = {k: target.probes[k] for k in SETS if k in target.probes}
    if found:
        return found, "probes"
    items = intro_probes(name, target.intro) if target.intro else []
    return ({"forget_fb": items[:1], "forget_qa": items[1:]} if items else {}), "intro"


def screen(
    model,
    tokenizer,
    names: list[str],
    roots=(),
    batch_size: int = 16,
    shots: int = 0,
    scorer: str = "rwku",
    done=lambda row: None,
) -> list[dict]:
    """One row per target, best-known first; `done(row)` is called as each chunk of targets finishes."""
    rows = []
    for start in range(0, len(names), 8):  # a few targets per batch of generations: full batches, steady progress
        chunk = {name: probes_of(name, roots) for name in names[start : start + 8]}
        keyed = {f"{name}\t{key}": items for name, (probes, _) in chunk.items() for key, items in probes.items()}
        _, records = evaluate_target(model, tokenizer, keyed, batch_size, 30, shots=shots, scorer=scorer)
        for name, (probes, source) in chunk.items():
            mine = [r for r in records if r["set"].split("\t")[0] == name]
            by_set = {key: [r["score"] for r in mine if r["set"].endswith("\t" + key)] for key in probes}
            row = {
                "target": name,
                "source": source,
                "n_probes": len(mine),
                **{key: statistics.fmean(s) for key, s in by_set.items() if s},
                "score": metrics.aggregate(by_set).get("forget_all", 0.0),
                "off_format": 100 * sum(r["answer_type"] in ("off_format", "empty") for r in mine) / max(1, len(mine)),
                "examples": [f"{r['query'][:60]} -> {r['prediction'][:40]}" for r in mine[:2]],
            }
            rows.append(row)
            done(row)
    return sorted(rows, key=lambda r: -r["score"])
