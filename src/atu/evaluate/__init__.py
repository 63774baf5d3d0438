"""Evaluation: RWKU's probes (rwku.py), answer types (answers.py), membership inference (mia.py), general utility
(utility.py), target screening (screen.py), all through one batched decoder (generation.py)."""

from __future__ import annotations

from .. import data as datalib
from .generation import complete, decode, generate_corpus, reword_passages
from .mia import mia_texts, rwku_mia
from .rwku import build_prompt, evaluate_target, rwku_recall, summarize

__all__ = [
    "build_prompt",
    "complete",
    "decode",
    "evaluate",
    "evaluate_target",
    "generate_corpus",
    "reword_passages",
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
    retained = []
    if eval_cfg.retain_count and (probe_sets is None or set(probe_sets) & set(datalib.RETAIN_SETS)):
        retained = retain_of(target, eval_cfg)
        probes |= datalib.retain_probes(retained)
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
    named = {"retain_targets": ", ".join(t.name for t in retained)} if retained else {}
    return {"scorer": eval_cfg.scorer, "prompt": prompt} | named | scores, records


_RETAIN: dict = {}


def retain_of(target: datalib.Target, eval_cfg) -> list[datalib.Target]:
    """The retain score's targets for `target` (loaded once per process: every evaluation of a run uses the same)."""
    key = (target.name, tuple(eval_cfg.retain_targets), eval_cfg.retain_count, eval_cfg.max_probes_per_file)
    if key not in _RETAIN:
        others = datalib.retain_targets(
            target,
            eval_cfg.retain_targets,
            eval_cfg.retain_count,
            [str(f.parent) for f in target.folders],
            eval_cfg.max_probes_per_file,
        )
        _RETAIN[key] = others
    return _RETAIN[key]
