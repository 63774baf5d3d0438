"""`atu compare`: several methods on the same target(s), model, data and evaluation, each into its own run folder
(`<out>/<target>/<method>/`), then one side-by-side table (Markdown + CSV), a trade-off plot and a report.

Finished runs (run.json status "done") are kept and not rerun, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from . import metrics, report, runs
from .attacks import check_names, run_attacks
from .config import load_config, quote
from .console import say
from .data import slug
from .errors import AtuError
from .methods import get_method
from .pipeline import resumable, resume_config, unlearn
from .runs import Run

COLUMNS = (
    "forget_fb",
    "forget_qa",
    "forget_aa",
    "forget_all",
    "neighbor_fb",
    "neighbor_qa",
    "neighbor_all",
    "retain_all",
)
# what kind of answers each model gave (% per type, forget and neighbour) and the forget answers' fluency
ANSWERS = tuple(m.key for m in metrics.of_kind("answers"))
# overrides that change the starting model or how it is scored: a run with one of these evaluates its own "before"
STARTING_POINT = ("model", "eval", "data.roots", "target", "run.device", "+")
# a target counts as known when the starting model scores at least this on its forget probes (forget-all, before)
KNOWN = 15.0


def method_overrides(entry: str, per_method: dict[str, list[str]]) -> list[str]:
    """'ga' -> method=ga; 'npo+lora' -> method=npo method.lora=true; plus the user's `npo:key=value` overrides."""
    name, _, variant = entry.partition("+")
    if variant not in ("", "lora"):
        raise AtuError(f"method entry {entry!r}: the only variant is +lora (e.g. ga+lora)")
    return [f"method={name}"] + (["method.lora=true"] if variant else []) + per_method.get(entry, [])


def run_all(
    methods: list[str],
    targets: list[str],
    out: Path,
    shared: list[str],
    per_method: dict[str, list[str]],
    attacks: list[str] | None = None,
    seeds: int = 1,
) -> list[dict]:
    if attacks:
        check_names(attacks)
    if seeds > 1 and any(o.startswith("run.seed=") for o in shared):
        raise AtuError("--seeds N runs seeds 0..N-1; drop run.seed=... or drop --seeds")
    plans = []  # every configuration is validated before the first (long) run starts
    for target in targets:
        for entry in methods:
            for seed in range(seeds):
                name = entry.replace("+", "_") + (f"-seed{seed}" if seeds > 1 else "")
                run = Run(out / slug(target) / name)
                overrides = shared + [f"target={quote(target)}"] + method_overrides(entry, per_method)
                overrides += [f"run.seed={seed}"] if seeds > 1 else []
                cfg = load_config(overrides + [f"run.output_dir={quote(run)}", "run.overwrite=true"])
                plans.append((target, entry, run, cfg))
    rows, before = [], {}  # target -> a finished run whose "before" evaluation the others reuse
    shared = {}  # the original model and its attacked scores, computed once for all runs (attacks.run_attacks)
    for i, (target, entry, run, cfg) in enumerate(plans):
        changes_start = any(o.startswith(STARTING_POINT) for o in per_method.get(entry, []))
        if run.status() == "done":
            say(f"[{i + 1}/{len(plans)}] {entry} on {target}: already done in {run}, kept")
        elif resumable(run, cfg):
            say(f"[{i + 1}/{len(plans)}] {entry} on {target}: resuming the interrupted run in {run}")
            unlearn(resume_config(run.path, []), resume=True)
        else:
            say(f"[{i + 1}/{len(plans)}] {entry} on {target} -> {run}")
            unlearn(cfg, reuse_before=None if changes_start else before.get(target))
        if not changes_start:
            before.setdefault(target, run)
        if attacks and not run.attack_rows():
            run_attacks(run, attacks, cfg, shared)
        rows.extend(collect(run, entry))
    write_outputs(rows, out, [run for _, _, run, _ in plans])
    return rows


def collect_folder(folder: Path, out: Path) -> list[dict]:
    """Every finished run folder under `folder` (a sweep), one table (labels: `sweep_labels`)."""
    found = runs.finished_runs(folder)
    if not found:
        raise AtuError(f"no finished run folder (run.json with status done) under {folder}; pass a sweep folder")
    rows = []
    for run, label in zip(found, sweep_labels(found, folder)):
        rows.extend(collect(run, label))
    write_outputs(rows, out, found)
    return rows


def sweep_labels(found: list[Run], folder: Path) -> list[str]:
    """Each run's label in a sweep's table: its method, shared by the runs of one method and target that differ only
    in their seed (the table gives their mean ± sd); a method run on one target with different training settings
    (model, data, encoder or method: τ, hook layers, a learning rate) or twice with one seed is labelled with each
    run's folder. Run and evaluation bookkeeping (threads, eval.every, eval.save_points) does not split seeds."""
    infos, configs = [run.info() for run in found], [run.config() for run in found]
    groups: dict[tuple, list[int]] = {}
    for i, info in enumerate(infos):
        groups.setdefault((info["method"], info["target"]), []).append(i)
    labels = [info["method"] for info in infos]
    for members in groups.values():
        seeds = [configs[i].run.seed for i in members]
        # the encoder's settings matter only to a method that loads it (ATU), not to GA, NPO or RMU
        trained = ("model", "data", "method") + (
            ("encoder",) if get_method(infos[members[0]]["method"]).needs_encoder else ()
        )
        settings = {
            json.dumps({k: OmegaConf.to_container(configs[i][k]) for k in trained if k in configs[i]}, sort_keys=True)
            for i in members
        }
        if len(members) > 1 and (len(set(seeds)) < len(seeds) or len(settings) > 1):
            for i in members:
                labels[i] = f"{infos[i]['method']} [{found[i].path.relative_to(folder)}]"
    return labels


def collect(run: Run, entry: str) -> list[dict]:
    """One row per evaluation of a finished run ('before', then each unlearning stage); attack numbers join the
    unlearned model's (last) row and the 'before' row."""
    info = run.info()
    seed = run.config().run.seed
    rows = [
        {
            "method": entry,
            "target": info["target"],
            "seed": seed,
            "stage": e["stage"],
            "tau": e.get("tau"),
            "seconds": info.get("seconds"),
            "trainable_parameters": info.get("trainable_parameters"),
            **{k: e.get(k) for k in COLUMNS + ANSWERS},
            **{k: e[k] for k in ("prompt", "scorer") if e.get(k)},
            "run_dir": str(run),
        }
        for e in run.evals()
    ]
    if rows:
        for a in run.attack_rows():
            rows[-1][f"{a['attack']}: {a['metric']}"] = (
                a["after_attack"] if a["after_attack"] is not None else a["after"]
            )
            if rows[0]["stage"] == "before":
                rows[0][f"{a['attack']}: {a['metric']}"] = a["before"]
    return rows


def final_rows(rows: list[dict]) -> list[dict]:
    """Per method and target: the last evaluation (the unlearned model); plus one 'before' row per target."""
    out, seen_before = [], set()
    for r in rows:
        if r["stage"] == "before" and r["target"] not in seen_before:
            seen_before.add(r["target"])
            out.append({**r, "method": "before", "seconds": None, "trainable_parameters": None})
    last = {}
    for r in rows:
        if r["stage"] != "before":
            last[(r["method"], r["target"], r.get("seed"))] = r
    return out + list(last.values())


def seed_means(finals: list[dict]) -> list[dict]:
    """Rows of several seeds (one method, one target) as one: the mean, and the standard deviation as `<key>_sd`."""
    groups: dict[tuple, list[dict]] = {}
    for r in finals:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    return [_mean_row(group, group[0]) for group in groups.values()]


def _mean_row(group: list[dict], first: dict) -> dict:
    keys = list(COLUMNS) + report.extra_columns(group) + ["seconds"]
    row = {**first, **{k: _mean([g.get(k) for g in group]) for k in keys}, "n_runs": len(group)}
    if len(group) > 1:
        row |= {f"{k}_sd": _sd([g.get(k) for g in group]) for k in keys if k != "seconds"}
    return row


def _sd(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def target_means(finals: list[dict]) -> list[dict]:
    """Per method, the mean (± standard deviation) over all targets and seeds, and over the targets the model knew
    (forget-all before ≥ KNOWN)."""
    targets = sorted({r["target"] for r in finals})
    if len(targets) < 2:
        return []
    known = {r["target"] for r in finals if r["method"] == "before" and (r["forget_all"] or 0) >= KNOWN}
    out = []
    for label, keep in ((f"mean of {len(targets)} targets", set(targets)), (f"mean of {len(known)} known", known)):
        for method in dict.fromkeys(r["method"] for r in finals):
            group = [r for r in finals if r["method"] == method and r["target"] in keep]
            if group:
                row = _mean_row(group, {"method": method, "target": label, "trainable_parameters": None})
                out.append(row | {"seconds": None})
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table(rows: list[dict]) -> report.Table:
    """The unlearned models (per target: the mean ± sd over seeds), then the means over targets (and seeds)."""
    finals = final_rows(rows)
    return report.compare_table(seed_means(finals) + target_means(finals), list(COLUMNS))


def answers_table(rows: list[dict]) -> report.Table:
    """Per method and target (and seed), before and after: the share of each answer type and the forget answers'
    fluency."""
    finals = final_rows(rows)
    keys = [k for k in ANSWERS if any(r.get(k) is not None for r in finals)]
    return report.Table(
        ["Method", "Target"] + [metrics.label(k) for k in keys],
        [[r["method"], r["target"]] + [report.fmt(r.get(k)) for k in keys] for r in finals],
        [False, False] + [True] * len(keys),
    )


# ---------------------------------------------------------------- trade-off fronts

KEEP = (0.9, 0.8)  # "keeps ≥ 90% (80%) of the retain score": the matched-forgetting table's columns


def dominates(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    """Every point of front b is matched or beaten on both axes by some point of front a."""
    return all(any(fa <= fb and ka >= kb for fa, ka in a) for fb, kb in b)


def relation(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> str:
    if not a or not b:
        return "–"
    ab, ba = dominates(a, b), dominates(b, a)
    return "equal" if ab and ba else "dominates" if ab else "is dominated" if ba else "crosses"


def _points(rows: list[dict], keep_key: str) -> list[tuple[float, float]]:
    return [
        (r["forget_all"], r[keep_key]) for r in rows if r.get("forget_all") is not None and r.get(keep_key) is not None
    ]


def fronts_table(rows: list[dict], reference: str = "atu") -> report.Table:
    """Per method and target: the best forget-all any evaluation of its run(s) reached while keeping ≥ 90% (80%) of
    the retain score (the step or stage, and the mean over seeds), and how `reference`'s front relates to it."""
    keep_key = "retain_all" if any(r.get("retain_all") is not None for r in rows) else "neighbor_all"
    body = []
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        start = next((r for r in mine if r["stage"] == "before"), None)
        if start is None or not start.get(keep_key):
            continue
        has_reference = any(r["method"] == reference and r["stage"] != "before" for r in mine)
        ref = report.pareto_front(
            _points([r for r in mine if r["method"] == reference], keep_key) + _points([start], keep_key)
        )
        for method in dict.fromkeys(r["method"] for r in mine if r["stage"] != "before"):
            cells = []
            for share in KEEP:
                best = []
                for seed in dict.fromkeys(r.get("seed") for r in mine if r["method"] == method):
                    run = [r for r in mine if r["method"] == method and r.get("seed") == seed] + [start]
                    ok = [
                        r
                        for r in run
                        if (r.get(keep_key) or 0) >= share * start[keep_key] and r.get("forget_all") is not None
                    ]
                    best.append(min(ok, key=lambda r: r["forget_all"]))
                where = ", ".join(str(b["stage"]) for b in best)
                cells.append(f"{statistics.fmean(b['forget_all'] for b in best):.1f} ({where})")
            own = report.pareto_front(
                _points([r for r in mine if r["method"] == method], keep_key) + _points([start], keep_key)
            )
            body.append(
                [
                    method,
                    target,
                    f"{start['forget_all']:.1f}",
                    *cells,
                    relation(ref, own) if method != reference and has_reference else "–",
                ]
            )
    kept = "retain-all" if keep_key == "retain_all" else "neighbour-all"
    return report.Table(
        ["Method", "Target", "Forget all before"]
        + [f"Best forget all, {kept} ≥ {int(100 * s)}% (where)" for s in KEEP]
        + [f"{reference.upper()}'s front vs this one"],
        body,
        [False, False, True, True, True, False],
    )


def write_outputs(rows: list[dict], out: Path, run_folders: list[Run]) -> None:
    """compare.md, compare.csv (every stage), tradeoff.png and the report linking every run's own report."""
    compare, answers, fronts = table(rows), answers_table(rows), fronts_table(rows)
    runs.write_text(
        out / "compare.md",
        compare.markdown()
        + "\n\n"
        + report.scores_note(rows)
        + "\n\nMatched forgetting: the best forget-all each run reached at any evaluation while keeping the share of"
        " retain-all (`eval.every` adds evaluations inside stages):\n\n"
        + fronts.markdown()
        + "\n\nWhat kind of answers (docs/evaluation.md):\n\n"
        + answers.markdown()
        + "\n",
    )
    runs.write_csv(out / "compare.csv", rows)
    for run in run_folders:
        if run.is_run():
            report.write_run_report(run)
    report.write_compare_report(out, rows, compare, [r for r in run_folders if r.is_run()], answers, fronts)


def rewrite_report(folder: Path) -> Path:
    """`atu report` on a comparison folder: its table, plot and report again, from compare.csv and the run folders."""
    rows = runs.read_csv(folder / runs.COMPARE[1])
    found = []
    for run_dir in dict.fromkeys(r["run_dir"] for r in rows if r.get("run_dir")):
        run = Run(run_dir)
        moved = Run(
            folder / run.path.parent.name / run.path.name
        )  # a copied comparison keeps runs as <target>/<method>/
        found.append(moved if moved.is_run() else run)
    write_outputs(rows, folder, found)
    return folder / "report.html"
