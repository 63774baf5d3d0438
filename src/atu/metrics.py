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
    probe_type: str | None = None  # "aa_type": the mean over forget AA probes of this adversarial type
    chance: float | None = None  # what a model that knows nothing scores, where that is one number
    note: str = ""  # how to read it, for tables that explain their columns
    brief: bool = True  # shown in the compact tables (terminal, comparison); every metric is in the report
    digits: int = 1  # decimals in tables: 3 for the 0-1 fractions of the utility sets

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


def digits(key: str) -> int:
    """Decimals to show for a metric, or for an attack's "<attack>: <metric>" column."""
    metric = REGISTRY.get(key.rpartition(": ")[2])
    return metric.digits if metric else 1


def utility_set(key: str) -> str:
    """The utility set a score comes from ("truthfulqa_mc1" -> "truthfulqa"): the key of `utility()`'s "sets"."""
    return key.split("_")[0]


def label(key: str) -> str:
    """The column label of a registered metric; other keys (an attack's "quant4: forget_all") stand as they are."""
    return REGISTRY[key].column if key in REGISTRY else key


def attack_row(attack: str, metric: str, before, after, attacked, note: str = "") -> dict:
    """One robustness row: `metric` (a key of this registry) before unlearning, after it, and after the attack."""
    return {
        "attack": attack,
        "metric": metric,
        "before": before,
        "after": after,
        "after_attack": attacked,
        "note": note,
    }


def recovered(attack_row: dict) -> float | None:
    """The share of the forgotten score (before − after) an attack brings back; None where nothing was forgotten."""
    b, a, x = attack_row["before"], attack_row["after"], attack_row["after_attack"]
    return None if None in (b, a, x) or b - a <= 1e-9 else (x - a) / (b - a)


def of_kind(kind: str) -> list[Metric]:
    return [m for m in REGISTRY.values() if m.kind == kind]


def probe_sets() -> list[Metric]:
    return of_kind("probes")


def aa_type(probe_type: str) -> str:
    """RWKU's adversarial type of a level-3 probe, with the language of a cross-lingual one dropped."""
    return "cross lingual" if probe_type.startswith("cross lingual") else probe_type


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
# RWKU's global probe counts (3,268 FB, 2,879 QA, 6,984 AA; 5,846 + 5,533 neighbour): the ATU reference weights a
# target's level means by these, whatever that target's own counts are
register(
    Metric(
        "forget_all",
        "Forget all",
        True,
        "aggregate",
        parts=FORGET,
        weights=(3268, 2879, 6984),
        chance=0.0,
        note="level means weighted by RWKU's global counts (3268 FB, 2879 QA, 6984 AA), as the reference",
    )
)
register(
    Metric(
        "forget_all_target",
        "Forget all (this target's counts)",
        True,
        "aggregate",
        parts=FORGET,
        chance=0.0,
        note="mean over every forget probe of this target (its own counts weight the levels)",
        brief=False,
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
        weights=(5846, 5533),
        chance=0.0,
        note="level means weighted by RWKU's global counts (5846 FB, 5533 QA), as the reference",
    )
)
register(
    Metric(
        "neighbor_all_target",
        "Neighbour all (this target's counts)",
        False,
        "aggregate",
        parts=NEIGHBOR,
        chance=0.0,
        note="mean over every neighbour probe of this target",
        brief=False,
    )
)
# the retain score: other known targets' forget FB/QA probes (eval.retain_targets), knowledge that must survive
register(Metric("retain_fb", "Retain FB", False, "retain", chance=0.0, brief=False))
register(Metric("retain_qa", "Retain QA", False, "retain", chance=0.0, brief=False))
register(
    Metric(
        "retain_all",
        "Retain all",
        False,
        "aggregate",
        parts=("retain_fb", "retain_qa"),
        weights=(3268, 2879),
        chance=0.0,
        note="FB and QA probes of other targets the model knows (eval.retain_targets), RWKU's global FB/QA weights",
    )
)

# ours: paraphrased and multi-hop questions about the target (where written)
register(Metric("rephrase", "Rephrase", True, "probes", "rephrase.json", chance=0.0))
register(Metric("multihop", "Multi-hop", True, "probes", "multihop.json", chance=0.0))

# forget AA per adversarial type (RWKU's level-3 types; cross-lingual probes of every language together)
for _type, _label in (
    ("prefix injection", "prefix injection"),
    ("reverse query", "reverse query"),
    ("multiple choice", "multiple choice"),
    ("context hint", "context hint"),
    ("role play", "role play"),
    ("synonym manipulation", "synonym manipulation"),
    ("incontext learning", "in-context learning"),
    ("affirmative suffix", "affirmative suffix"),
    ("cross lingual", "cross-lingual"),
):
    register(Metric("aa_" + _type.replace(" ", "_"), f"AA {_label}", True, "aa_type", probe_type=_type, chance=0.0))

# what kind of answers the model gave (evaluate/answers.py): % of the forget and of the neighbour answers
for _group, _group_label in (("forget", "forget"), ("neighbor", "neighbour")):
    for _kind, _kind_label in (
        ("correct", "correct"),
        ("wrong", "wrong"),
        ("refusal", "refusal"),
        ("off_format", "off-format"),
        ("empty", "empty"),
    ):
        register(
            Metric(
                f"answers_{_group}_{_kind}",
                f"% {_group_label} answers {_kind_label}",
                _kind == "correct" if _group == "forget" else _kind != "correct",
                "answers",
                brief=False,
            )
        )
register(
    Metric(
        "fluency_forget",
        "Fluency of forget answers (entropy, bits)",
        False,
        "answers",
        brief=False,
        note="RWKU's n-gram entropy over the model's answers to the forget probes: noise about the target "
        "shows as a fall",
    )
)

# RWKU's membership-inference figures: 100 × the mean per-passage NLL (the reference's LOSS score, negated) on the
# target's own passages (FM) and on other people's (RM); unlearning should raise FM and leave RM
register(
    Metric(
        "mia_fm",
        "MIA FM (forget NLL ×100)",
        False,
        "mia",
        note="100 × mean NLL of forget_mia.json passages: higher = the target's text is less familiar",
    )
)
register(
    Metric(
        "mia_rm",
        "MIA RM (retain NLL ×100)",
        True,
        "mia",
        note="100 × mean NLL of retain_mia.json passages: should not rise",
    )
)

# general utility (RWKU's sets) and held-out perplexity
register(Metric("mmlu", "MMLU", False, "utility", chance=0.25, note="5-shot, next-token choice among A-D", digits=3))
register(Metric("bbh", "BBH EM", False, "utility", note="exact match after RWKU's normalisation", digits=3))
register(
    Metric(
        "bbh_rwku",
        "BBH EM (RWKU's code)",
        False,
        "utility",
        note="RWKU's scorer as it runs: the prediction against each character of the answer",
        digits=3,
    )
)
register(Metric("truthfulqa_mc1", "TruthfulQA MC1", False, "utility", digits=3))
register(Metric("truthfulqa_mc2", "TruthfulQA MC2", False, "utility", digits=3))
register(Metric("triviaqa_em", "TriviaQA EM", False, "utility", chance=0.0, digits=3))
register(Metric("triviaqa_f1", "TriviaQA F1", False, "utility", chance=0.0, note="the ATU paper's 'Fac'", digits=3))
register(
    Metric(
        "fluency_entropy",
        "Fluency (entropy, bits)",
        False,
        "utility",
        note="RWKU's weighted bigram/trigram entropy of the generations",
        digits=2,
    )
)
register(Metric("perplexity", "Perplexity (held-out)", True, "utility", digits=2))

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
for _bits in (8, 4):
    register(
        Metric(
            f"int{_bits}_codes_changed",
            f"% weights whose int{_bits} code changed",
            False,
            "robustness",
            note=f"decoder-block linear weights whose {_bits}-bit round-to-nearest code moved: the rest is undone by "
            "quantization",
        )
    )
for _q in ("p50", "p90", "p99"):
    register(
        Metric(
            f"update_over_int8_step_{_q}",
            f"|Δw| / int8 step ({_q})",
            False,
            "robustness",
            note="size of the unlearning update of a moved weight in units of its original 8-bit quantization step",
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
