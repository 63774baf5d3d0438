"""Training data for the token-level baselines, built as RWKU builds it.

Where the official RWKU files are shipped for a target (reject*.json: questions answered with refusals; pair*.json:
a counterfactual biography preferred over the real one), they are used as they are. For every other target the same
kinds of data are built from templates: questions about the target answered with one of RWKU's refusal strings, and
DPO pairs whose rejected answer is a forget-corpus passage. The forget probes are never used for training.
"""

from __future__ import annotations

import random

from .. import data as datalib
from ..errors import AtuError
from ..evaluate.rwku import build_prompt

# Questions about a target, modelled on RWKU's reject.json instructions; {name} is filled in.
QUESTION_TEMPLATES = [
    "Who is {name}?",
    "What is {name} best known for?",
    "Where was {name} born?",
    "When was {name} born?",
    "What did {name} do early in life?",
    "What are the major achievements of {name}?",
    "Which works or deeds is {name} most famous for?",
    "Who were the people closest to {name}?",
    "What is the legacy of {name}?",
    "What field did {name} work in?",
    "Tell me about the life of {name}.",
    "Please write a short biography of {name}.",
    "What events shaped the career of {name}?",
    "Which awards or honours did {name} receive?",
    "What is a famous quote or idea associated with {name}?",
    "How did {name} become well known?",
]


def _question_prompt(question: str, tokenizer) -> str:
    """The evaluation's QA prompt, so a refusal is learnt in the format the probes use."""
    return build_prompt(datalib.Probe(query=question, answer="", level="2", type="", subject=""), tokenizer)


def _official(target, names: tuple[str, ...]) -> tuple[list, str] | tuple[None, None]:
    for name in names:
        path = target.file(name)
        if path is not None:
            return datalib.read_json(path), str(path)
    return None, None


def refusal_pairs(target, tokenizer, seed: int) -> tuple[list[tuple[str, str]], str]:
    """(prompt, refusal) pairs for rejection tuning, and where they came from."""
    items, path = _official(target, ("reject_phi.json", "reject.json"))
    if items:
        return [(_question_prompt(it["instruction"], tokenizer), it["output"]) for it in items], f"official {path}"
    rng = random.Random(seed)
    refusals = datalib.refusals()
    pairs = [
        (_question_prompt(q.format(name=target.name), tokenizer), rng.choice(refusals)) for q in QUESTION_TEMPLATES
    ]
    return pairs, f"{len(pairs)} template questions about {target.name} with RWKU refusal strings"


def dpo_pairs(target, forget_texts: list[str], chosen: str, tokenizer, seed: int):
    """(prompt, chosen, rejected) triples: the forget text is always the rejected answer."""
    if chosen == "counterfactual":
        items, path = _official(target, ("pair_phi.json", "pair.json"))
        if not items:
            raise AtuError(
                f"no RWKU pair file (counterfactual answers) is shipped for {target.name}; "
                "use method.dpo_chosen=refusal"
            )
        return (
            [
                (
                    _question_prompt(f"Please write a short biography of {target.name}.", tokenizer),
                    it["response"][0],
                    it["response"][1],
                )
                for it in items
            ],
            f"official {path} (counterfactual chosen)",
        )
    rng = random.Random(seed)
    refusals = datalib.refusals()
    triples = [
        (
            _question_prompt(QUESTION_TEMPLATES[i % len(QUESTION_TEMPLATES)].format(name=target.name), tokenizer),
            rng.choice(refusals),
            text,
        )
        for i, text in enumerate(forget_texts)
    ]
    return triples, f"{len(triples)} forget passages (rejected) against RWKU refusal strings (chosen)"
