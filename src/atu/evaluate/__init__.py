"""Evaluation: RWKU's probes (rwku.py), answer types (answers.py), membership inference (mia.py), general utility
(utility.py), target screening (screen.py), all through one batched decoder (generation.py)."""

from __future__ import annotations

from .. import data as datalib
from .generation import complete, decode, generate_corpus
from .mia import mia_texts, rwku_mia
from .rwku import build_prompt, evaluate_target, rwku_recall, summarize

__all__ = [
    "build_prompt",
    "complete",
    "decode",
    "evaluate",
    "evaluate_target",
    "generate_corpus",
    "prompt_shots",
    "rwku_recall",
    "summarize",
]


def prompt_shots(eval_cfg, tokenizer) -> int:
    """How many examples go before each probe: eval.prompt=auto is few-shot for a model without a chat template
    (a base model), RWKU's zero-shot prompt for one with."""
    mode = eval_cfg.prompt
    if mode == "auto":
        mode = "zero_shot" if getattr(tokenizer, "chat_template", None) else "few_shot"
    return eval_cfg.shots if mode == "few_shot" else 0


def evaluate(
    model, tokenizer, target: datalib.Target, eval_cfg, system: str | None = None, probe_sets=None, mia: bool = True
):
    """A target's probes (its neighbours too unless eval.neighbours=false; or only `probe_sets`), scored as
    eval_cfg says, plus RWKU's MIA figures (eval.mia, unless `mia` is false). Returns (metrics, per-probe records);
    the metrics name the scorer and the prompt that made them."""
    probes = {k: v for k, v in target.probes.items() if eval_cfg.neighbours or not k.startswith("neighbor")}
    if probe_sets is not None:
        probes = {k: v for k, v in probes.items() if k in probe_sets}
    shots = prompt_shots(eval_cfg, tokenizer)
    scores, records = evaluate_target(
        model, tokenizer, probes, eval_cfg.batch_size, eval_cfg.max_new_tokens, system, shots, eval_cfg.scorer
    )
    if mia and eval_cfg.mia and probe_sets is None:
        members, others = mia_texts(target, eval_cfg.max_probes_per_file)
        if members and others:
            scores |= {k: v for k, v in rwku_mia(model, tokenizer, members, others).items() if v is not None}
    prompt = f"few-shot ({shots})" if shots else "zero-shot"
    return {"scorer": eval_cfg.scorer, "prompt": prompt} | scores, records
