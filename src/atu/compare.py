"""`atu compare`: several methods on the same target(s), model, data and evaluation, each into its own run folder,
then one side-by-side table (Markdown + CSV) and a trade-off plot (forget-all vs neighbour-all).

Finished runs (run.json status "done") are kept and not rerun, so an interrupted comparison resumes where it stopped.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .errors import AtuError

TABLE = [("forget_fb", "Forget FB ↓"), ("forget_qa", "Forget QA ↓"), ("forget_aa", "Forget AA ↓"),
         ("forget_all", "Forget all ↓"), ("neighbor_fb", "Nbr FB ↑"), ("neighbor_qa", "Nbr QA ↑"),
         ("neighbor_all", "Nbr all ↑")]


# overrides that change the model before unlearning or how it is scored: a run with one of these evaluates its own "before"
STARTING_POINT = ("model", "eval", "data.roots", "target", "run.device", "+")


def method_overrides(entry: str, per_method: dict[str, list[str]]) -> list[str]:
    """'ga' -> method=ga; 'npo+lora' -> method=npo method.lora=true; plus the user's `npo:key=value` overrides."""
    name, _, variant = entry.partition("+")
    if variant not in ("", "lora"):
        raise AtuError(f"method entry {entry!r}: the only variant is +lora (e.g. ga+lora)")
    return [f"method={name}"] + (["method.lora=true"] if variant else []) + per_method.get(entry, [])


def run_all(methods: list[str], targets: list[str], out: Path, shared: list[str], per_method: dict[str, list[str]],
            say=print, attacks: list[str] | None = None) -> list[dict]:
    from .config import load_config, quote
    from .pipeline import resumable, resume_config, run_status, unlearn

    # validate every configuration before the first (long) run starts
    plans = []
    for target in targets:
        for entry in methods:
            overrides = shared + [f"target={quote(target)}"] + method_overrides(entry, per_method)
            run_dir = out / _slug(target) / entry.replace("+", "_")
            plans.append((target, entry, run_dir,
                          load_config(overrides + [f"run.output_dir={quote(run_dir)}", "run.overwrite=true"])))
    rows, before = [], {}  # target -> a finished run whose "before" evaluation the others reuse
    for i, (target, entry, run_dir, cfg) in enumerate(plans):
        changes_start = any(o.startswith(STARTING_POINT) for o in per_method.get(entry, []))
        if run_status(run_dir) == "done":
            say(f"[{i + 1}/{len(plans)}] {entry} on {target}: already done in {run_dir}, kept")
        elif resumable(run_dir, cfg):
            say(f"[{i + 1}/{len(plans)}] {entry} on {target}: resuming the interrupted run in {run_dir}")
            unlearn(resume_config(run_dir, []), resume=True)
        else:
            say(f"[{i + 1}/{len(plans)}] {entry} on {target} -> {run_dir}")
            unlearn(cfg, reuse_before=None if changes_start else before.get(target))
        if not changes_start:
            before.setdefault(target, run_dir)
        if attacks and not (run_dir / "attacks" / "attacks.json").exists():
            from .attacks import run_attacks
            run_attacks(run_dir, attacks, cfg, say)
        rows.extend(collect(run_dir, entry))
    write_outputs(rows, out)
    from .report import write_report
    write_report(out)
    return rows


def _slug(name: str) -> str:
    from .data import slug

    return slug(name)


def collect_folder(folder: Path, out: Path) -> list[dict]:
    """Every finished run folder under `folder` (a sweep), one table: a method that occurs several times on one target
    (different τ, hook layers, ...) is labelled with its folder."""
    from .pipeline import run_status

    runs = sorted(p.parent for p in folder.rglob("run.json") if run_status(p.parent) == "done")
    if not runs:
        raise AtuError(f"no finished run folder (run.json with status done) under {folder}; pass a sweep folder")
    infos = [json.loads((r / "run.json").read_text()) for r in runs]
    keys = [(i["method"], i["target"]) for i in infos]  # a sweep over targets keeps one label per method (means)
    rows = []
    for run_dir, info, key in zip(runs, infos, keys):
        label = info["method"] if keys.count(key) == 1 else f"{info['method']} [{run_dir.relative_to(folder)}]"
        rows.extend(collect(run_dir, label))
    write_outputs(rows, out)
    from .report import write_report
    write_report(out)
    return rows


def collect(run_dir: Path, entry: str) -> list[dict]:
    """One row per evaluation of a finished run: 'before', then each unlearning stage."""
    from .pipeline import read_evals

    run = json.loads((run_dir / "run.json").read_text())
    evals = read_evals(run_dir)
    rows = [{"method": entry, "target": run["target"], "stage": e["stage"], "tau": e.get("tau"),
             "seconds": run.get("seconds"), "trainable_parameters": run.get("trainable_parameters"),
             **{k: e.get(k) for k, _ in TABLE}, "run_dir": str(run_dir)} for e in evals]
    attacks = run_dir / "attacks" / "attacks.json"
    if attacks.exists() and rows:  # the robustness numbers join the unlearned model's (last) row
        for a in json.loads(attacks.read_text()):
            rows[-1][f"{a['attack']}: {a['metric']}"] = a["after_attack"]
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
            last[(r["method"], r["target"])] = r
    return out + list(last.values())


def _fmt(v, digits=1):
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _count(n) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


# a target counts as known when the starting model scores at least this on its forget probes (forget-all, before)
KNOWN = 15.0


def target_means(finals: list[dict]) -> list[dict]:
    """Per method, the mean over all targets and over the targets the model knew (forget-all before ≥ KNOWN)."""
    targets = sorted({r["target"] for r in finals})
    if len(targets) < 2:
        return []
    known = {r["target"] for r in finals if r["method"] == "before" and (r["forget_all"] or 0) >= KNOWN}
    out = []
    for label, keep in ((f"mean of {len(targets)} targets", set(targets)), (f"mean of {len(known)} known", known)):
        for method in dict.fromkeys(r["method"] for r in finals):
            group = [r for r in finals if r["method"] == method and r["target"] in keep]
            attacks = dict.fromkeys(k for g in group for k in g if ": " in k)  # "quant4: forget_all", ...
            if group:
                out.append({"method": method, "target": label, "seconds": None, "trainable_parameters": None,
                            **{k: _avg([g.get(k) for g in group]) for k in [k for k, _ in TABLE] + list(attacks)}})
    return out


def _avg(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table(rows: list[dict]):
    from .report import Table

    finals = final_rows(rows)
    extra = list(dict.fromkeys(k for r in finals for k in r if ": " in k))  # attack columns, when attacks ran
    body = [[r["method"], r["target"]] + [_fmt(r[k]) for k, _ in TABLE]
            + [_fmt(r["seconds"], 0), _count(r["trainable_parameters"])] + [_fmt(r.get(k)) for k in extra]
            for r in finals + target_means(finals)]
    return Table(["Method", "Target"] + [label for _, label in TABLE] + ["Time (s)", "Trainable params"] + extra, body,
                 [False, False] + [True] * (len(TABLE) + 2 + len(extra)))


def markdown(rows: list[dict]) -> str:
    return table(rows).markdown()


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    targets = sorted({r["target"] for r in rows})
    for target in targets:
        before = next((r for r in rows if r["target"] == target and r["stage"] == "before"), None)
        if before and before["forget_all"] is not None:
            ax.scatter([before["forget_all"]], [before["neighbor_all"]], marker="*", s=160, color="black", zorder=3)
            ax.annotate("before", (before["forget_all"], before["neighbor_all"]), textcoords="offset points", xytext=(5, 5))
        methods = list(dict.fromkeys(r["method"] for r in rows if r["target"] == target))
        colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
        for k, method in enumerate(methods):
            pts = [r for r in rows if r["target"] == target and r["method"] == method and r["stage"] != "before"
                   and r["forget_all"] is not None]
            if not pts:
                continue
            xs, ys = [p["forget_all"] for p in pts], [p["neighbor_all"] for p in pts]
            line, = ax.plot(xs, ys, marker="o", color=colors(k % colors.N),
                            label=method if len(targets) == 1 else f"{method} ({target})")
            ax.annotate(method, (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, -10), fontsize=8,
                        color=line.get_color())
    ax.set_xlabel("forget all (ROUGE-L recall ×100) ← better")
    ax.set_ylabel("neighbour all (ROUGE-L recall ×100) → better")
    ax.set_title("Forgetting vs keeping: one point per method (ATU: one per stage)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_outputs(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(rows) + "\n")
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["method"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "tradeoff.png")
