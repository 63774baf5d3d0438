"""What every attack is: a transform of the unlearned model (or of the prompts) that re-runs some probes, giving rows
of before unlearning / after unlearning / after the attack. An attack takes what it needs from an `AttackContext`
(the run, its target, its models and evaluations) and returns its rows; it writes nothing itself."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from .. import data as datalib
from ..evaluate import evaluate
from ..metrics import attack_row as row  # noqa: F401  (what every attack builds its rows with)
from ..runs import Run


@dataclass
class AttackContext:
    run: Run
    cfg: object  # the run's configuration (with the command line's eval/run settings)
    target: datalib.Target
    device: object
    model: object  # the unlearned model, as its method rebuilt it
    tokenizer: object
    system: str | None  # the method's instruction before every probe (ICU), or None
    before: dict  # the run's evaluation before unlearning
    after: dict  # its last evaluation (the unlearned model)
    predictions_before: list[dict]
    predictions_after: list[dict]
    load_original: Callable[[], object]  # the model before unlearning
    load_saved: Callable[[str | None], object]  # the run's model again, optionally loaded quantized ("int8", "nf4")
    # What does not depend on the attacked run (the original model, its relearned scores), kept across the runs that
    # one `atu attack A B` or `atu compare --attacks` call attacks, so the original is put through each attack once.
    shared: dict = field(default_factory=dict, repr=False)

    def once(self, key: tuple, compute: Callable[[], object]):
        """compute() the first time `key` is asked for among the runs sharing this context's `shared`, then kept."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def original(self):
        """The model before unlearning, loaded when an attack first asks for it."""
        return self.once(("original model", repr(self.cfg.model)), self.load_original)

    def score(self, model, probes: dict, system: str | None = "run's") -> dict:
        """Scores of `model` on `probes` ({set: [Probe]}) as the run's evaluation scores them (its prompt and its
        scorer), with the run's instruction unless `system` is given."""
        prompt = self.system if system == "run's" else system
        asked = datalib.Target(self.target.name, self.target.intro, probes=probes)
        scores, _ = evaluate(model, self.tokenizer, asked, self.cfg.eval, prompt, probe_sets=set(probes))
        return scores

    def probe_sets(self, keys) -> dict:
        return {k: v for k, v in self.target.probes.items() if k in keys}


def mean_score(records: list[dict], keep) -> float | None:
    scores = [r["score"] for r in records if keep(r)]
    return statistics.fmean(scores) if scores else None


class Attack:
    name = ""

    def available(self) -> bool:
        """Whether it can run here (its optional package is installed); `atu attack` runs those by default."""
        return True

    def check(self) -> None:
        """Fail now, in one line, when it cannot run: before any long attack starts."""

    def run(self, ctx: AttackContext) -> list[dict]:
        raise NotImplementedError


ATTACKS: dict[str, Attack] = {}


def register(name: str, attack: Attack | None = None):
    """register("mia")(SomeAttack) for a class, register("quant8", Quantization(8, "rtn")) for a configured one."""

    def add(item):
        instance = item() if isinstance(item, type) else item
        instance.name = name
        ATTACKS[name] = instance
        return item

    return add(attack) if attack is not None else add
