"""Is it gone or hidden? Attacks on a finished run: each transforms the unlearned model (or the prompts) and re-runs
the probes, giving a robustness row: before unlearning / after unlearning / after the attack.

  quant8, quant4  round-to-nearest weight quantization (per-group scales)      -> forget and neighbour probes
  bnb8, bnb4      bitsandbytes LLM.int8() and NF4 weights (CPU or GPU)          -> forget and neighbour probes
  relearn         a few fine-tuning steps on half the forget QA pairs          -> the other half
  incontext       three true QA facts about the target in the prompt           -> forget QA
  rephrase        paraphrased / translated and multi-hop questions              -> read from the run's evaluations
  probe           logistic-regression probe on hook-layer states (target vs other people's sentences): accuracy
  mia             membership inference AUC, forget_mia vs retain_mia texts (loss, zlib, min-k%)
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

from ..errors import AtuError, did_you_mean

ATTACKS = ("quant8", "quant4", "bnb8", "bnb4", "relearn", "incontext", "rephrase", "probe", "mia")
BNB = {"bnb8": "int8", "bnb4": "nf4"}


def default_attacks() -> list[str]:
    """Every attack that can run here: the bitsandbytes ones only where the package is installed."""
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    return [a for a in ATTACKS if a not in BNB or has_bnb]
FORGET_AND_NEIGHBOURS = ("forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa")


def _mean(records: list[dict], keep) -> float | None:
    scores = [r["score"] for r in records if keep(r)]
    return statistics.fmean(scores) if scores else None


def run_attacks(run_dir: Path, names: list[str], cfg, say=print) -> list[dict]:
    from .. import data as datalib
    from ..evaluate import evaluate_target
    from ..models import load_lm, pick_device
    from ..files import write_json
    from ..pipeline import choose_other_targets, load_run_model, read_evals

    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise AtuError(f"unknown attack {unknown[0]!r}.{did_you_mean(unknown[0], ATTACKS)} Known: {', '.join(ATTACKS)}")
    if any(n in BNB for n in names):
        from ..models import bnb_settings
        bnb_settings("int8", "cpu")  # fails now, in one line, when bitsandbytes is missing: before any long attack
    evals = read_evals(run_dir)
    if not evals or evals[0]["stage"] != "before":
        raise AtuError(f"{run_dir} has no 'before' evaluation; attacks compare against it (run atu unlearn with probes)")
    before_row, after_row = evals[0], evals[-1]
    stage = after_row["stage"]
    preds_before = json.loads((run_dir / "predictions" / "before.json").read_text())
    preds_after = json.loads((run_dir / "predictions" / f"{stage}.json").read_text())
    target = datalib.load_target(json.loads((run_dir / "run.json").read_text())["target"], list(cfg.data.roots))
    device = pick_device(cfg.run.device)
    say(f"loading the unlearned model of {run_dir}")
    model, tok, system = load_run_model(run_dir, cfg, device)
    original = None

    def original_model():
        nonlocal original
        if original is None:
            say(f"loading the original model {cfg.model.name_or_path}")
            original = load_lm(cfg.model, device)[0]
        return original

    def score(m, probes: dict, sys_prompt=system):
        metrics, _ = evaluate_target(m, tok, probes, cfg.eval.batch_size, cfg.eval.max_new_tokens, sys_prompt)
        return metrics

    fn_sets = {k: v for k, v in target.probes.items() if k in FORGET_AND_NEIGHBOURS}
    rows = []
    for name in names:
        t0 = time.time()
        say(f"attack {name}")
        if name in ("quant8", "quant4"):
            from .quantize import quantize_model

            attacked = copy.deepcopy(model)
            quantize_model(attacked, 8 if name == "quant8" else 4)
            m = score(attacked, fn_sets)
            del attacked
            for key in ("forget_all", "neighbor_all"):
                rows.append(_row(name, key, before_row.get(key), after_row.get(key), m.get(key)))
        elif name in BNB:
            attacked = load_run_model(run_dir, cfg, device, quantize=BNB[name])[0]
            m = score(attacked, fn_sets)
            del attacked
            for key in ("forget_all", "neighbor_all"):
                rows.append(_row(name, key, before_row.get(key), after_row.get(key), m.get(key), f"bitsandbytes {BNB[name]}"))
        elif name == "relearn":
            from .relearn import relearn, split_probes

            train, held = split_probes(target.probes.get("forget_qa", []), cfg.run.seed)
            if not held:
                raise AtuError(f"{target.name} has no forget QA probes to relearn from")
            held_q = {p.query for p in held}
            attacked = copy.deepcopy(model)
            losses = relearn(attacked, tok, train, seed=cfg.run.seed)
            m = score(attacked, {"forget_qa": held})
            del attacked
            pick = lambda r: r["set"] == "forget_qa" and r["query"] in held_q
            rows.append(_row(name, "forget_qa (held-out half)", _mean(preds_before, pick), _mean(preds_after, pick),
                             m.get("forget_qa"), f"{len(train)} QA pairs, {len(losses)} steps, loss {losses[0]:.2f}→{losses[-1]:.2f}"))
        elif name == "incontext":
            from .incontext import with_context

            qa = target.probes.get("forget_qa", [])
            m = score(model, {"forget_qa": with_context(qa, seed=cfg.run.seed)})
            rows.append(_row(name, "forget_qa", before_row.get("forget_qa"), after_row.get("forget_qa"), m.get("forget_qa"),
                             "3 true QA facts in the prompt"))
        elif name == "rephrase":
            for key in ("rephrase", "multihop"):
                if key in before_row:
                    rows.append(_row(name, key, before_row[key], after_row.get(key), after_row.get(key),
                                     "the run's own evaluation of these probes"))
        elif name == "probe":
            from .probe import probe_accuracy

            others = [t for o in choose_other_targets(target.name, 3, list(cfg.data.roots), cfg.run.seed) for t in o.forget_corpus[:40]]
            layer = _probe_layer(run_dir, model)
            acc0 = probe_accuracy(original_model(), tok, layer, target.forget_corpus, others, cfg.run.seed)
            acc1 = probe_accuracy(model, tok, layer, target.forget_corpus, others, cfg.run.seed)
            rows.append(_row(name, f"probe accuracy, layer {layer} (held-out)", 100 * acc0, 100 * acc1, 100 * acc1,
                             "target sentences vs other people's; 50 = chance"))
        elif name == "mia":
            from ..evaluate.mia import mia

            f_texts, h_texts = _mia_texts(target)
            if not f_texts:
                raise AtuError(f"{target.name} has no forget_mia.json/retain_mia.json for membership inference")
            m0, m1 = mia(original_model(), tok, f_texts, h_texts), mia(model, tok, f_texts, h_texts)
            for key in m0:
                rows.append(_row(name, key.replace("mia_", "").replace("_auc", " AUC ×100"), 100 * m0[key], 100 * m1[key],
                                 100 * m1[key], "forget_mia vs retain_mia; 50 = cannot tell apart"))
        for r in rows:
            r.setdefault("seconds", round(time.time() - t0, 1))
        say(f"attack {name} done in {time.time() - t0:.0f} s")
    out = run_dir / "attacks"
    out.mkdir(exist_ok=True)
    if (out / "attacks.json").exists():  # attacks run earlier stay, in their order; the ones re-run now replace theirs
        earlier = [r for r in json.loads((out / "attacks.json").read_text()) if r["attack"] not in names]
        rows = earlier + rows
    write_json(out / "attacks.json", rows)
    (out / "attacks.md").write_text(markdown(rows) + "\n")
    return rows


def _row(attack, metric, before, after, attacked, note=""):
    return {"attack": attack, "metric": metric, "before": before, "after": after, "after_attack": attacked, "note": note}


def _probe_layer(run_dir: Path, model) -> int:
    from ..models import decoder_layers

    head = run_dir / "head.json"
    if head.exists():
        return json.loads(head.read_text())["hook_layer"]
    return max(1, round(0.9 * len(decoder_layers(model))))


def _mia_texts(target) -> tuple[list[str], list[str]]:
    def load(name):
        path = target.file(name)
        return [it["text"] for it in json.loads(path.read_text())] if path else []
    return load("forget_mia.json"), load("retain_mia.json")


def _fmt(v):
    return "–" if v is None else f"{v:.1f}"


def table(rows: list[dict]):
    from ..report import Table

    out = []
    for r in rows:
        b, a, x = r["before"], r["after"], r["after_attack"]
        # share of the forgotten score that the attack brings back (forget metrics only)
        forget_metric = r["metric"].startswith(("forget", "rephrase", "multihop"))
        rec = f"{100 * (x - a) / (b - a):.0f}%" if forget_metric and None not in (b, a, x) and abs(b - a) > 1e-9 else "–"
        out.append([r["attack"], r["metric"], _fmt(b), _fmt(a), _fmt(x), rec, str(r["seconds"]), r["note"]])
    return Table(["Attack", "Metric", "Before unlearning", "After unlearning", "After attack", "Recovered", "Time (s)",
                  "Note"], out, [False, False, True, True, True, True, True, False])


def markdown(rows: list[dict]) -> str:
    return table(rows).markdown()
