"""Reports: tables, plots and the report.md + report.html pages of a run folder or a comparison.

Renders only: it receives rows and folders' contents and writes Markdown, HTML and PNG through the run-folder owner
(`atu.runs`). A run's report is read back from its folder alone, so `atu report DIR` rebuilds the same report at any
time and a report never shows numbers the folder does not hold.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from omegaconf import OmegaConf  # noqa: E402

from . import metrics, runs  # noqa: E402
from .console import change_summary, score_columns, stage_label  # noqa: E402
from .runs import Run  # noqa: E402

SCORERS = {
    "rwku": "RWKU's scorer (the rouge package, case-sensitive, as RWKU's and the ATU reference's code)",
    "lenient": "the lenient scorer (rouge-score: lower-cased, punctuation dropped; not RWKU's numbers)",
}


def scores_note(rows: list[dict]) -> str:
    """What made the probe scores of these rows: the scorer and the prompt."""
    scorers = sorted({r.get("scorer", "rwku") for r in rows}) or ["rwku"]
    prompts = sorted({r["prompt"] for r in rows if r.get("prompt")})
    return (
        "Scores: ROUGE-L recall ×100 of the reference answer in the model's greedy answer, by "
        + "; ".join(SCORERS.get(s, s) for s in scorers)
        + (f"; prompt: {', '.join(prompts)}" if prompts else "")
        + ". Forget all: the level means weighted by RWKU's global probe counts, as the reference. "
        "↓ lower is better (forgotten), ↑ higher is better (kept)."
    )


@dataclass
class Table:
    """One table, rendered as Markdown for report.md and the terminal's neighbours, and as HTML for report.html."""

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None  # right-aligned columns

    def markdown(self) -> str:
        numeric = self.numeric or [False] * len(self.headers)
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += [
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in self.rows
        ]
        return "\n".join(lines)

    def html(self) -> str:
        numeric = self.numeric or [False] * len(self.headers)
        cls = lambda i: ' class="num"' if numeric[i] else ""
        head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(self.headers))
        body = "".join(
            "<tr>" + "".join(f"<td{cls(i)}>{html.escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


# ---------------------------------------------------------------- tables


def stage_table(history: list[dict]) -> Table:
    cols = score_columns(history)
    return Table(
        ["Stage"] + [metrics.label(k) for k in cols],
        [[stage_label(r)] + [fmt(r.get(k)) for k in cols] for r in history],
        [False] + [True] * len(cols),
    )


ANSWERS_NOTE = (
    "Share of answers of each type (the rules: docs/evaluation.md), and RWKU's n-gram entropy of the forget answers "
    "themselves: a method that forgets by emitting noise about the target shows there."
)
MIA_NOTE = "100 × mean NLL of the target's own passages (FM, should rise) and of other people's (RM, should not)."


def kind_table(history: list[dict], kind: str) -> Table | None:
    """Stages × the registered metrics of one kind (AA types, answer types, MIA) present in the rows."""
    keys = [m.key for m in metrics.of_kind(kind) if any(m.key in r for r in history)]
    if not keys:
        return None
    return Table(
        ["Stage"] + [metrics.label(k) for k in keys],
        [[stage_label(r)] + [fmt(r.get(k)) for k in keys] for r in history],
        [False] + [True] * len(keys),
    )


def answer_examples(before: list[dict], after: list[dict]) -> Table:
    """One forget probe per answer type the unlearned model gave, with both answers."""
    rows = []
    for kind in ("correct", "wrong", "refusal", "off_format", "empty"):
        pair = next(
            (
                (b, a)
                for b, a in zip(before, after)
                if a["set"].startswith("forget") and a.get("answer_type") == kind and b["query"] == a["query"]
            ),
            None,
        )
        if pair:
            b, a = pair
            rows.append(
                [kind, a["query"], a["answer"], f"{b['prediction']} ({b.get('answer_type')})", a["prediction"]]
            )
    return Table(["After: type", "Probe", "Reference", "Before (type)", "After"], rows)


def utility_table(utility: dict) -> Table:
    """Utility before/after with each score's chance level (a small model sits near chance on several)."""
    first = next(iter(utility.values()))
    cols = list(utility)
    rows = [
        [metrics.label(key)]
        + [fmt(utility[c]["scores"][key], metrics.digits(key)) for c in cols]
        + [fmt(chance, metrics.digits(key)), first.get("sets", {}).get(metrics.utility_set(key), "")]
        for key, chance in first["chance"].items()
    ]
    return Table(["Utility"] + cols + ["chance", "set"], rows, [False] + [True] * (len(cols) + 1) + [False])


def forgotten_share(attack_row: dict) -> float | None:
    """The share of the forgotten score an attack brings back, for the metrics where forgetting is the point."""
    forget = attack_row["metric"].startswith(("forget", "rephrase", "multihop"))
    return metrics.recovered(attack_row) if forget else None


def attack_table(rows: list[dict]) -> Table:
    out = []
    for r in rows:
        n = metrics.digits(r["metric"])
        b, a, x = (fmt(r[k], n) for k in ("before", "after", "after_attack"))
        share = forgotten_share(r)
        rec = "–" if share is None else f"{100 * share:.0f}%"
        out.append([r["attack"], metrics.label(r["metric"]), b, a, x, rec, str(r["seconds"]), r["note"]])
    return Table(
        ["Attack", "Metric", "Before unlearning", "After unlearning", "After attack", "Recovered", "Time (s)", "Note"],
        out,
        [False, False, True, True, True, True, True, False],
    )


def matched_attack_table(results: dict[str, tuple[dict, dict, list[dict]]]) -> Table:
    """Several runs attacked at matched forgetting, side by side: per attack row, the original model's score, then
    each run's score after unlearning -> after the attack (recovered). `results`: run label -> (its evaluation before
    unlearning, the evaluation attacked, its attack rows)."""
    keys = list(dict.fromkeys((r["attack"], r["metric"]) for *_, rows in results.values() for r in rows))
    starts = " / ".join(dict.fromkeys(fmt(b.get("forget_all")) for b, _, _ in results.values()))
    out = [
        ["point attacked", "forget-all", starts]
        + [f"{e['stage']}: {fmt(e['forget_all'])}" for _, e, _ in results.values()]
    ]
    for attack, metric in keys:
        n, cells, before = metrics.digits(metric), [], []
        for *_, rows in results.values():
            r = next((r for r in rows if (r["attack"], r["metric"]) == (attack, metric)), None)
            if r is not None and r["before"] is not None:
                before.append(fmt(r["before"], n))
            if r is None or r["after_attack"] is None:  # a diagnostic (update_size, utility) or a set scored as is
                cells.append("–" if r is None else fmt(r["after"], n))
            else:
                share = forgotten_share(r)
                share_text = "" if share is None else f" ({100 * share:.0f}%)"
                cells.append(f"{fmt(r['after'], n)} → {fmt(r['after_attack'], n)}{share_text}")
        # the original model's score (one value when every run started from the same model)
        out.append([attack, metrics.label(metric), " / ".join(dict.fromkeys(before)) or "–"] + cells)
    return Table(
        ["Attack", "Metric", "Before unlearning"] + list(results), out, [False, False, True] + [True] * len(results)
    )


def extra_columns(rows: list[dict]) -> list[str]:
    """The rows' "<source>: <metric>" keys ("quant4: forget_all" when attacks ran), in first-seen order. A mean row's
    "<key>_sd" is not a column: it is shown as "± sd" in its key's column."""
    return list(dict.fromkeys(k for r in rows for k in r if ": " in k and not k.endswith("_sd")))


def compare_table(rows: list[dict], columns: list[str]) -> Table:
    """One row per method and target (and the means): the score columns, time, size, then any attack columns."""
    extra = extra_columns(rows)
    body = [
        [r["method"], r["target"]]
        + [_mean_sd(r, k) for k in columns]
        + [fmt(r.get("seconds"), 0), _count(r.get("trainable_parameters"))]
        + [_mean_sd(r, k) for k in extra]
        for r in rows
    ]
    return Table(
        ["Method", "Target"] + [metrics.label(k) for k in columns] + ["Time (s)", "Trainable params"] + extra,
        body,
        [False, False] + [True] * (len(columns) + 2 + len(extra)),
    )


def _mean_sd(row: dict, key: str) -> str:
    """A value, with "± sd" when the row is a mean over seeds or targets."""
    sd = row.get(f"{key}_sd")
    n = metrics.digits(key)
    return fmt(row.get(key), n) + (f" ± {sd:.{n}f}" if sd is not None else "")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(forget, keep) points not beaten on both axes (forget lower, keep higher), sorted by forget."""
    best = []
    for f, k in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not best or k > best[-1][1]:
            best.append((f, k))
    return best


def _count(n) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def example_probes(before: list[dict], after: list[dict], n_forget: int = 6, n_neighbour: int = 3) -> Table:
    """The forget probes whose score fell most, and the neighbour probes first in the file, with both answers."""
    pairs = [(b, a) for b, a in zip(before, after) if b["query"] == a["query"] and b["set"] == a["set"]]
    forget = sorted(
        (p for p in pairs if p[0]["set"].startswith("forget")), key=lambda p: p[1]["score"] - p[0]["score"]
    )
    neighbour = [p for p in pairs if p[0]["set"].startswith("neighbor")]
    rows = [
        [
            b["set"],
            b["query"],
            b["answer"],
            f"{b['prediction']} ({b['score']:.0f})",
            f"{a['prediction']} ({a['score']:.0f})",
        ]
        for b, a in forget[:n_forget] + neighbour[:n_neighbour]
    ]
    return Table(["Set", "Probe", "Reference", "Before (score)", "After (score)"], rows)


# ---------------------------------------------------------------- plots


def plot_stages(history: list[dict], path: Path) -> None:
    """Forget and neighbour scores at each evaluation: before, then each unlearning stage (labelled with its τ)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = list(range(len(history)))
    for key, style in (
        ("forget_all", "-o"),
        ("forget_fb", ":."),
        ("forget_qa", ":."),
        ("forget_aa", ":."),
        ("neighbor_all", "-s"),
    ):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=metrics.get(key).label)
    ax.set_xticks(
        x,
        [
            (
                "before"
                if r["stage"] == "before"
                else f"{r['stage']}\nτ={r['tau']:.2f}"
                if r.get("tau") is not None
                else r["stage"]
            )
            for r in history
        ],
    )
    ax.set_ylabel("ROUGE-L recall ×100")
    ax.set_title("Scores per unlearning stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_tradeoff(history: list[dict], path: Path) -> None:
    """Forget-all against neighbour-all, one point per evaluation: the path unlearning takes."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pts = [r for r in history if r.get("forget_all") is not None and r.get("neighbor_all") is not None]
    ax.plot([r["forget_all"] for r in pts], [r["neighbor_all"] for r in pts], "-o", color="tab:blue")
    for i, r in enumerate(pts):  # alternate label heights: stages that changed nothing sit on the same point
        ax.annotate(
            stage_label(r),
            (r["forget_all"], r["neighbor_all"]),
            textcoords="offset points",
            xytext=(5, 4 - 12 * (i % 2)),
            fontsize=8,
        )
    ax.set_xlabel("forget all ← better")
    ax.set_ylabel("neighbour all → better")
    ax.set_title("Trade-off across stages")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_levels(before: dict, after: dict, path: Path) -> None:
    """Per-level bars, before and after unlearning."""
    levels = [k for k in metrics.FORGET + metrics.NEIGHBOR if before.get(k) is not None or after.get(k) is not None]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = range(len(levels))
    ax.bar([i - 0.2 for i in x], [before.get(k) or 0 for k in levels], 0.4, label="before", color="tab:gray")
    ax.bar([i + 0.2 for i in x], [after.get(k) or 0 for k in levels], 0.4, label=stage_label(after), color="tab:blue")
    ax.set_xticks(list(x), [metrics.get(k).label for k in levels])
    ax.set_ylabel("ROUGE-L recall ×100")
    ax.set_title("Per probe level (forget: lower is better; neighbour: higher)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_methods(rows: list[dict], path: Path, keep: str = "neighbor_all") -> None:
    """Forget-all against `keep` (neighbour-all, or retain-all) for every method's evaluations (one point per stage
    and per `eval.every` point); with retain-all, each method's Pareto front is drawn over its points. One panel per
    target (up to three across), one colour per method in every panel."""
    targets = sorted({r["target"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    across = min(3, len(targets))
    down = -(-len(targets) // across)
    size = (6.5, 4.5) if len(targets) == 1 else (4.0 * across, 3.2 * down + 0.8)
    fig, axes = plt.subplots(down, across, figsize=size, squeeze=False)
    for ax, target in zip(axes.flat, targets):
        before = next((r for r in rows if r["target"] == target and r["stage"] == "before"), None)
        if before and before.get("forget_all") is not None and before.get(keep) is not None:
            ax.scatter([before["forget_all"]], [before[keep]], marker="*", s=160, color="black", zorder=3)
            ax.annotate("before", (before["forget_all"], before[keep]), textcoords="offset points", xytext=(5, 5))
        for k, method in enumerate(methods):
            pts = [
                r
                for r in rows
                if r["target"] == target
                and r["method"] == method
                and r["stage"] != "before"
                and r.get("forget_all") is not None
                and r.get(keep) is not None
            ]
            if not pts:
                continue
            color = colors(k % colors.N)
            if keep == "neighbor_all":  # one line per run (seed), in training order
                for n, run in enumerate(dict.fromkeys(p.get("run_dir") for p in pts)):
                    line = [p for p in pts if p.get("run_dir") == run]
                    xy = [p["forget_all"] for p in line], [p[keep] for p in line]
                    ax.plot(*xy, marker="o", color=color, label=method if n == 0 else None)
            else:  # points of every seed, and the front they make (with the starting model)
                xs, ys = [p["forget_all"] for p in pts], [p[keep] for p in pts]
                ax.scatter(xs, ys, marker="o", s=18, color=color, alpha=0.6, label=method)
                start = [(before["forget_all"], before[keep])] if before else []
                fx, fy = zip(*pareto_front(list(zip(xs, ys)) + start))
                ax.step(fx, fy, where="post", color=color)
        if len(targets) > 1:
            ax.set_title(target, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(targets) :]:
        ax.axis("off")
    title = (
        "Forgetting vs keeping: one point per evaluation"
        if keep == "neighbor_all"
        else "Forgetting vs retain: every evaluation, and each method's front"
    )
    fig.suptitle(title)
    fig.supxlabel("forget all (ROUGE-L recall ×100) ← better")
    fig.supylabel(f"{'neighbour' if keep == 'neighbor_all' else 'retain'} all (ROUGE-L recall ×100) → better")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes.flat[0].legend(handles.values(), handles.keys(), fontsize=7, ncol=2 if len(handles) > 6 else 1)
    _save(fig, path, dpi=150)


def _save(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    runs.save_figure(fig, path, dpi)
    plt.close(fig)


# ---------------------------------------------------------------- pages


def write_run_report(run: Run) -> Path:
    """report.md + report.html (and the plots) of a run folder, from its files alone; returns the HTML path."""
    info, history, config = run.info(), run.evals(), run.config()
    title = f"Unlearning {info['target']} with {info['method']}"
    intro = (
        f"Model `{config.model.name_or_path}`, device {info.get('device')}, status {info.get('status')}, "
        f"{info.get('seconds', 0) or 0:.0f} s, {info.get('trainable_parameters') or 0:,} trainable parameters."
    )
    sections: list[tuple[str, list]] = []  # (heading, [Table | str (paragraph) | ("img"|"link"|"pre", ...)])
    if history:
        sections.append(("Before and after", [stage_table(history), change_summary(history)]))
        plot_stages(history, run / "fig_stages.png")
        plot_tradeoff(history, run / "fig_tradeoff.png")
        plot_levels(history[0], history[-1], run / "fig_levels.png")
        sections.append(
            (
                "Plots",
                [
                    ("img", "fig_stages.png", "scores per stage"),
                    ("img", "fig_tradeoff.png", "trade-off across stages"),
                    ("img", "fig_levels.png", "per-level bars"),
                ],
            )
        )
        for heading, kind, note in (
            ("Adversarial probes by type", "aa_type", "Forget AA (level 3) per RWKU attack type."),
            ("What kind of answers", "answers", ANSWERS_NOTE),
            ("Membership inference (RWKU's FM and RM)", "mia", MIA_NOTE),
        ):
            table = kind_table(history, kind)
            if table is not None:
                sections.append((heading, [table, note]))
        first, last = run.predictions("before"), run.predictions(history[-1]["stage"])
        if len(history) > 1 and first and last:
            examples = [example_probes(first, last), "Forget probes whose score fell most, then neighbour probes."]
            examples += [answer_examples(first, last), "One forget probe for each type of answer after unlearning."]
            sections.append(("Example probes", examples))
    else:
        sections.append(
            (
                "Before and after",
                [
                    "No evaluation was recorded (no probes for this target, or the run "
                    "stopped before its first evaluation)."
                ],
            )
        )
    if info.get("utility"):
        sections.append(("Utility", [utility_table(info["utility"])]))
    if run.attack_rows():
        sections.append(("Robustness (is it gone or hidden?)", [attack_table(run.attack_rows())]))
    notes = [
        f"Forget corpus: {info.get('forget_corpus')} ({info.get('forget_passages')} passages); other targets in "
        f"alignment: {', '.join(info.get('other_targets', [])) or 'none'}."
    ] + list(info.get("notes", []))
    if info.get("probe_files"):  # official RWKU files, or ours (paraphrases, multi-hop, user folders)
        notes.append("Probe files: " + "; ".join(f"{k}: {v}" for k, v in info["probe_files"].items()))
    skipped = next((r["skipped"] for r in run.records() if r.get("event") == "stage_start" and r.get("skipped")), None)
    if skipped:  # method.stop_gap: the last evaluation is of the model as it was when the stages stopped
        notes.insert(0, f"Unlearning {skipped}; the stages after it ran no step.")
    if info.get("error"):
        notes.insert(0, f"The run stopped: {info['error']}")
    sections.append(("Notes", notes))
    used = info.get("versions") or runs.versions()
    sections.append(("Versions", [", ".join(f"{k} {v}" for k, v in used.items())]))
    sections.append(("Configuration", [("pre", OmegaConf.to_yaml(config))]))
    return write_page(run.path, title, intro, sections, scores_note(history))


def write_compare_report(
    folder: Path,
    rows: list[dict],
    table: Table,
    run_folders: list[Run],
    answers: Table | None = None,
    fronts: Table | None = None,
) -> Path:
    """A comparison's page: its table, the methods' trade-off plots and fronts, and a link to every run's report."""
    plot_methods(rows, folder / "tradeoff.png")
    has_retain = any(r.get("retain_all") is not None for r in rows)
    if has_retain:
        plot_methods(rows, folder / "front_retain.png", "retain_all")
    links = [
        ("link", os.path.relpath(run / "report.html", folder), f"{run.path.parent.name} / {run.path.name}")
        for run in run_folders
    ]
    sections = [
        ("Comparison", [table, scores_note(rows)]),
        (
            "Trade-off",
            [("img", "tradeoff.png", "forget-all vs neighbour-all per method")]
            + (
                [("img", "front_retain.png", "forget-all vs retain-all per method, Pareto fronts")]
                if has_retain
                else []
            ),
        ),
        ("Matched forgetting", [fronts] if fronts is not None and fronts.rows else []),
        ("What kind of answers", [answers, ANSWERS_NOTE] if answers is not None and answers.rows else []),
        ("Runs", links or ["No run folders found."]),
        ("Versions", [", ".join(f"{k} {v}" for k, v in runs.versions().items())]),
    ]
    return write_page(
        folder,
        f"Comparison: {', '.join(dict.fromkeys(str(r['method']) for r in rows))}",
        f"Targets: {', '.join(sorted({str(r['target']) for r in rows}))}.",
        sections,
        scores_note(rows),
    )


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f3f3f3}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;margin:.5em 0}
img.plot{max-width:49%;vertical-align:top}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
h1{font-size:24px}h2{font-size:19px;margin-top:1.6em;border-bottom:1px solid #ddd}"""


def write_page(folder: Path, title: str, intro: str, sections, note: str) -> Path:
    """report.md and report.html from one list of sections, so they never disagree; returns the HTML path."""
    md = [f"# {title}", "", intro, "", note, ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro.replace('`', ''))}</p>"]
    body.append(f"<p>{html.escape(note)}</p>")
    for heading, items in sections:
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, Table):
                md += [item.markdown(), ""]
                body.append(item.html())
            elif isinstance(item, tuple) and item[0] == "img":
                md += [f"![{item[2]}]({item[1]})", ""]
                body.append(f'<img class="plot" src="{html.escape(item[1])}" alt="{html.escape(item[2])}">')
            elif isinstance(item, tuple) and item[0] == "link":
                md += [f"- [{item[2]}]({item[1]})"]
                body.append(f'<p><a href="{html.escape(item[1])}">{html.escape(item[2])}</a></p>')
            elif isinstance(item, tuple) and item[0] == "pre":
                md += ["```yaml", item[1].strip(), "```", ""]
                body.append(f"<pre>{html.escape(item[1])}</pre>")
            elif item:
                md += [str(item), ""]
                body.append(f"<p>{html.escape(str(item))}</p>")
        md.append("")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    runs.write_text(Path(folder) / "report.md", "\n".join(md))
    runs.write_text(Path(folder) / "report.html", page)
    return Path(folder) / "report.html"
