"""Is it gone or hidden? Attacks on a finished run, registered by name; each re-runs some probes on a transformed model
(or with changed prompts) and gives rows: before unlearning / after unlearning / after the attack.

  quant8, quant4  round-to-nearest weight quantization (per-group scales)      -> forget and neighbour probes
  bnb8, bnb4      bitsandbytes LLM.int8() and NF4 weights (CPU or GPU)          -> forget and neighbour probes
  update_size     not an attack: % of weights whose 8/4-bit code the update changed, |Δw| / int8 step quantiles
  relearn         fine-tuning on half the forget QA pairs, 3 learning rates    -> the other half, vs the original
  incontext       three true QA facts about the target in the prompt           -> forget QA
  rephrase        the forget FB/QA questions reworded (same answers)           -> vs their originals after unlearning
  probe           logistic-regression probe on hook-layer states (target vs other people's sentences): accuracy
  mia             membership inference AUC, forget_mia vs retain_mia texts (loss, zlib, min-k%)
  utility         not an attack: general utility (RWKU's sets or an MMLU sample, held-out perplexity) vs the original

Adding an attack: one file with an `Attack` subclass that registers itself, and one import line in `_load_all`
(docs/contributing.md).
"""

from __future__ import annotations

import time

from .. import data as datalib
from .. import report
from ..console import say
from ..errors import AtuError, did_you_mean
from ..models import load_lm, pick_device
from ..pipeline import load_run_model
from ..runs import POINTS, Run
from .base import ATTACKS, AttackContext


def _load_all() -> None:
    # each file registers itself; the order here is the order of `atu attack`'s table
    from . import quantize  # noqa: F401
    from . import relearn  # noqa: F401
    from . import incontext  # noqa: F401
    from . import rephrase  # noqa: F401
    from . import probe  # noqa: F401
    from . import mia  # noqa: F401
    from . import utility  # noqa: F401


def known() -> list[str]:
    _load_all()
    return list(ATTACKS)


def default_attacks() -> list[str]:
    """Every attack that can run here (the bitsandbytes ones only where the package is installed)."""
    _load_all()
    return [name for name, attack in ATTACKS.items() if attack.available()]


def check_names(names: list[str]) -> None:
    _load_all()
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise AtuError(
            f"unknown attack {unknown[0]!r}.{did_you_mean(unknown[0], ATTACKS)} Known: {', '.join(ATTACKS)}"
        )
    for name in names:
        ATTACKS[name].check()


def matched_level(folders: list[Run]) -> float:
    """The deepest forgetting every run reaches with a model that can be attacked: the largest of the runs' lowest
    forget-all over their kept evaluations."""
    return max(min(e["forget_all"] for e in kept_front(run)) for run in folders)


def front(run: Run) -> list[dict]:
    """The run's evaluations after unlearning began, in training order, that have a forget-all."""
    points = [e for e in run.evals() if e["stage"] != "before" and e.get("forget_all") is not None]
    if not points:
        raise AtuError(f"{run} has no forget-all evaluated after unlearning; attacks at a forget level need its front")
    return points


def kept_front(run: Run, points: list[dict] | None = None) -> list[dict]:
    """The front's evaluations (`points`, read from the run when not given) whose model exists to be attacked: the
    last one (the run's own model) and those kept under points/ (eval.save_points). A run without saved points is
    attacked at its end, and matched there."""
    points = front(run) if points is None else points
    return [e for e in points if e is points[-1] or Run(run / POINTS / e["stage"]).is_run()]


def point_at_forget(run: Run, level: float) -> tuple[Run, dict]:
    """The run as it was at the kept evaluation whose forget-all is closest to `level` from below (the earliest on a
    tie): the run itself when that is its last evaluation, else the model it kept there (eval.save_points)."""
    points = front(run)
    kept = kept_front(run, points)
    below = [e for e in kept if e["forget_all"] <= level + 1e-9]
    if not below:
        lowest = min(kept, key=lambda e: e["forget_all"])
        raise AtuError(
            f"{run} never reaches forget-all <= {level:g} with a kept model (its lowest: {lowest['forget_all']:.2f} "
            f"at {lowest['stage']}); pass a higher --at-forget, or run it with eval.save_points=true"
        )
    hit = max(below, key=lambda e: (e["forget_all"], -points.index(e)))
    closer = [e for e in points if hit["forget_all"] < e["forget_all"] <= level + 1e-9]
    if closer:
        near = max(closer, key=lambda e: e["forget_all"])
        say(
            f"{run}: {near['stage']} (forget-all {near['forget_all']:.2f}) is closer to {level:g} but "
            f"its model was not kept (eval.save_points=true keeps it); attacking {hit['stage']}"
        )
    return (run, hit) if hit is points[-1] else (Run(run / POINTS / hit["stage"]), hit)


def run_attacks(run: Run, names: list[str], cfg, shared: dict | None = None) -> list[dict]:
    """Run `names` on the finished run; their rows join (or replace, for an attack run again) the run's table.
    Runs attacked with the same `shared` dict put the original model through an attack once (AttackContext.shared)."""
    check_names(names)
    evals = run.evals()
    if not evals or evals[0]["stage"] != "before":
        raise AtuError(f"{run} has no 'before' evaluation; attacks compare against it (run atu unlearn with probes)")
    device = pick_device(cfg.run.device)
    say(f"loading the unlearned model of {run}")
    model, tok, system = load_run_model(run, cfg, device)
    ctx = AttackContext(
        run=run,
        cfg=cfg,
        target=datalib.load_target(run.info()["target"], list(cfg.data.roots)),
        device=device,
        model=model,
        tokenizer=tok,
        system=system,
        before=evals[0],
        after=evals[-1],
        predictions_before=run.predictions("before"),
        predictions_after=run.predictions(evals[-1]["stage"]),
        load_original=lambda: (
            say(f"loading the original model {cfg.model.name_or_path}") or load_lm(cfg.model, device)[0]
        ),
        load_saved=lambda quantize: load_run_model(run, cfg, device, quantize)[0],
        shared={} if shared is None else shared,
    )
    rows = []
    for name in names:
        t0 = time.time()
        say(f"attack {name}")
        new = ATTACKS[name].run(ctx)
        for r in new:
            r["seconds"] = round(time.time() - t0, 1)
        rows += new
        say(f"attack {name} done in {time.time() - t0:.0f} s")
    rows = [r for r in run.attack_rows() if r["attack"] not in names] + rows  # earlier attacks stay, in their order
    run.write_attack_rows(rows, report.attack_table(rows).markdown())
    return rows
