"""In-context attack: three true question-answer facts about the target go in the prompt before each forget question.
A model that only learnt to refuse or to avoid the name often answers once the context is set."""
from __future__ import annotations

import random

from ..data import Probe


def with_context(probes: list[Probe], n_facts: int = 3, seed: int = 0) -> list[Probe]:
    """Each QA probe rewritten as RWKU's 'incontext learning' type: facts from *other* probes, then the question."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(probes):
        others = [q for j, q in enumerate(probes) if j != i]
        facts = rng.sample(others, min(n_facts, len(others)))
        context = "".join(f"Question: {q.query}\nAnswer: {q.answer}\n" for q in facts)
        out.append(Probe(query=f"{context}Question: {p.query}", answer=p.answer, level=p.level,
                         type="incontext learning", subject=p.subject))
    return out
