"""Every number atu reports, defined once: its key, its label, which way is better, its chance level, and where it
comes from (a probe file, or the probe sets an aggregate combines). Evaluation, reports, `atu compare` and
`atu attack` read their keys and labels from here, so adding a metric is one `register(...)` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from .errors import AtuError, did_you_mean


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    kind: str  # "probes" (scored on a probe file), "aggregate", "utility", "robustness"
    probe_file: str | None = None  # probes: the RWKU file, found in the target's folders
    parts: tuple[str, ...] = ()  # aggregate: the probe sets it combines
    weights: tuple[float, ...] | None = None  # aggregate: fixed weights per part; None = weight by probe counts
    chance: float | None = None  # what a model that knows nothing scores, where that is one number
    note: str = ""  # how to read it, for tables that explain their columns

    @property
    def column(self) -> str:
        return f"{self.label} {'↓' if self.lower_is_better else '↑'}"


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    REGISTRY[metric.key] = metric
    return metric


def get(key: str) -> Metric:
    if key not in REGISTRY:
        raise AtuError(f"unknown metric {key!r}.{did_you_mean(key, REGISTRY)} Known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def label(key: str) -> str:
    """The column label of a registered metric; other keys (an attack's "quant4: forget_all") stand as they are."""
    return REGISTRY[key].column if key in REGISTRY else key


def of_kind(kind: str) -> list[Metric]:
    return [m for m in REGISTRY.values() if m.kind == kind]


def probe_sets() -> list[Metric]:
    return of_kind("probes")


def aggregate(parts_scores: dict[str, list[float]]) -> dict[str, float]:
    """Each registered aggregate over the probe scores of one evaluation ({set: [score per probe]})."""
    out = {}
    for m in of_kind("aggregate"):
        present = [p for p in m.parts if parts_scores.get(p)]
        if not present:
            continue
        if m.weights is None:  # weighted by this evaluation's probe counts: the mean over all its probes
            out[m.key] = fmean(s for p in present for s in parts_scores[p])
        else:
            weights = dict(zip(m.parts, m.weights))
            means = {p: fmean(parts_scores[p]) for p in present}
            out[m.key] = sum(weights[p] * means[p] for p in present) / sum(weights[p] for p in present)
    return out


FORGET = ("forget_fb", "forget_qa", "forget_aa")
NEIGHBOR = ("neighbor_fb", "neighbor_qa")

# RWKU's probe sets and their aggregates, in the order tables show them; scores are ROUGE-L recall ×100 of the
# reference answer in the model's answer
register(Metric("forget_fb", "Forget FB", True, "probes", "forget_level1.json", chance=0.0))
register(Metric("forget_qa", "Forget QA", True, "probes", "forget_level2.json", chance=0.0))
register(Metric("forget_aa", "Forget AA", True, "probes", "forget_level3.json", chance=0.0))
register(
    Metric(
        "forget_all",
        "Forget all",
        True,
        "aggregate",
        parts=FORGET,
        chance=0.0,
        note="mean over every forget probe (FB, QA, AA)",
    )
)
register(Metric("neighbor_fb", "Neighbour FB", False, "probes", "neighbor_level1.json", chance=0.0))
register(Metric("neighbor_qa", "Neighbour QA", False, "probes", "neighbor_level2.json", chance=0.0))
register(
    Metric(
        "neighbor_all",
        "Neighbour all",
        False,
        "aggregate",
        parts=NEIGHBOR,
        chance=0.0,
        note="mean over every neighbour probe (FB, QA)",
    )
)
# ours: paraphrased and multi-hop questions about the target (where written)
register(Metric("rephrase", "Rephrase", True, "probes", "rephrase.json", chance=0.0))
register(Metric("multihop", "Multi-hop", True, "probes", "multihop.json", chance=0.0))

# general utility (RWKU's sets) and held-out perplexity
register(Metric("mmlu", "MMLU", False, "utility", chance=0.25))
register(Metric("bbh", "BBH", False, "utility", note="answer formats differ per task: no single chance level"))
register(Metric("truthfulqa_mc1", "TruthfulQA MC1", False, "utility"))
register(Metric("truthfulqa_mc2", "TruthfulQA MC2", False, "utility"))
register(Metric("triviaqa", "TriviaQA", False, "utility", chance=0.0))
register(Metric("fluency_entropy", "Fluency (entropy)", False, "utility"))
register(Metric("perplexity", "Perplexity (held-out)", True, "utility"))

# what the attacks measure besides probe scores
register(
    Metric(
        "probe_accuracy",
        "Probe accuracy",
        True,
        "robustness",
        chance=50.0,
        note="held-out accuracy of a linear probe separating the target's sentences from others'",
    )
)
register(
    Metric(
        "mia_loss_auc",
        "MIA loss AUC ×100",
        True,
        "robustness",
        chance=50.0,
        note="forget_mia vs retain_mia; 50 = cannot tell apart",
    )
)
register(
    Metric(
        "mia_zlib_auc",
        "MIA zlib AUC ×100",
        True,
        "robustness",
        chance=50.0,
        note="forget_mia vs retain_mia; 50 = cannot tell apart",
    )
)
register(
    Metric(
        "mia_mink_auc",
        "MIA min-k% AUC ×100",
        True,
        "robustness",
        chance=50.0,
        note="forget_mia vs retain_mia; 50 = cannot tell apart",
    )
)
