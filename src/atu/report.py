"""Reports: the terminal table, and report.md + report.html with PNG plots for a run folder or a compare folder.

Everything is read back from the folder (config.yaml, run.json, metrics.jsonl, predictions/, attacks/), so
`atu report DIR` rebuilds the same report at any time, and a report never shows numbers the folder does not hold.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AtuError
from .files import write_text

COLUMNS = [("forget_fb", "Forget FB ↓"), ("forget_qa", "Forget QA ↓"), ("forget_aa", "Forget AA ↓"),
           ("forget_all", "Forget all ↓"), ("neighbor_fb", "Neighbour FB ↑"), ("neighbor_qa", "Neighbour QA ↑"),
           ("neighbor_all", "Neighbour all ↑"), ("rephrase", "Rephrase ↓"), ("multihop", "Multi-hop ↓")]
LEVELS = [("forget_fb", "Forget FB"), ("forget_qa", "Forget QA"), ("forget_aa", "Forget AA"),
          ("neighbor_fb", "Neighbour FB"), ("neighbor_qa", "Neighbour QA")]
SCORES = ("Scores: ROUGE-L recall ×100 of the reference answer in the model's greedy answer (RWKU protocol); "
          "↓ lower is better (forgotten), ↑ higher is better (kept).")


@dataclass
class Table:
    """One table, rendered as Markdown for report.md and the terminal's neighbours, and as HTML for report.html."""
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None  # right-aligned columns

    def markdown(self) -> str:
        numeric = self.numeric or [False] * len(self.headers)
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        numeric = self.numeric or [False] * len(self.headers)
        cls = lambda i: ' class="num"' if numeric[i] else ""
        head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(self.headers))
        body = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
                       for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _columns(history):
    return [(k, label) for k, label in COLUMNS if any(k in row for row in history)]


def _stage_label(row) -> str:
    return row["stage"] + (f" (τ={row['tau']:.3f})" if row.get("tau") is not None else "")


def _cell(row, key) -> str:
    return f"{row[key]:.1f}" if row.get(key) is not None else "–"


def stage_table(history: list[dict]) -> Table:
    cols = _columns(history)
    return Table(["Stage"] + [label for _, label in cols],
                 [[_stage_label(r)] + [_cell(r, k) for k, _ in cols] for r in history], [False] + [True] * len(cols))


def change_summary(history: list[dict]) -> str:
    if len(history) < 2:
        return ""
    before, after = history[0], history[-1]
    parts = []
    for key, name in (("forget_all", "forget-all"), ("neighbor_all", "neighbour-all")):
        if before.get(key) and after.get(key) is not None:
            parts.append(f"{name} {before[key]:.1f} → {after[key]:.1f} ({100 * (after[key] / before[key] - 1):+.0f}%)")
    return "; ".join(parts)


def utility_table_of(utility: dict) -> Table:
    """Utility before/after with each score's chance level (a small model sits near chance on several)."""
    first = next(iter(utility.values()))
    cols = list(utility)
    rows = [[key] + [f"{utility[c]['scores'][key]:.3f}" for c in cols] + ["–" if chance is None else f"{chance:.3f}"]
            for key, chance in first["chance"].items()]
    return Table(["Utility"] + cols + ["chance"], rows, [False] + [True] * (len(cols) + 1))


def utility_table(utility: dict) -> str:
    return utility_table_of(utility).markdown()


def print_table(history: list[dict]) -> None:
    if not history:
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    cols = _columns(history)
    table = RichTable(title="RWKU probes (ROUGE-L recall ×100)")
    table.add_column("Stage")
    for _, label in cols:
        table.add_column(label, justify="right")
    for row in history:
        table.add_row(_stage_label(row), *(_cell(row, k) for k, _ in cols))
    console = Console()
    console.print(table)
    summary = change_summary(history)
    if summary:
        console.print(summary)


# ---------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stages(history: list[dict], path: Path) -> None:
    """Forget and neighbour scores at each evaluation: before, then each unlearning stage (labelled with its τ)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = list(range(len(history)))
    for key, label, style in (("forget_all", "forget all", "-o"), ("forget_fb", "forget FB", ":."),
                              ("forget_qa", "forget QA", ":."), ("forget_aa", "forget AA", ":."),
                              ("neighbor_all", "neighbour all", "-s")):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=label)
    ax.set_xticks(x, [("before" if r["stage"] == "before" else
                       f"{r['stage']}\nτ={r['tau']:.2f}" if r.get("tau") is not None else r["stage"]) for r in history])
    ax.set_ylabel("ROUGE-L recall ×100")
    ax.set_title("Scores per unlearning stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(history: list[dict], path: Path) -> None:
    """Forget-all against neighbour-all, one point per evaluation: the path unlearning takes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pts = [r for r in history if r.get("forget_all") is not None and r.get("neighbor_all") is not None]
    ax.plot([r["forget_all"] for r in pts], [r["neighbor_all"] for r in pts], "-o", color="tab:blue")
    for i, r in enumerate(pts):  # alternate label heights: stages that changed nothing sit on the same point
        ax.annotate(_stage_label(r), (r["forget_all"], r["neighbor_all"]), textcoords="offset points",
                    xytext=(5, 4 - 12 * (i % 2)), fontsize=8)
    ax.set_xlabel("forget all ← better")
    ax.set_ylabel("neighbour all → better")
    ax.set_title("Trade-off across stages")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_levels(before: dict, after: dict, path: Path) -> None:
    """Per-level bars, before and after unlearning."""
    plt = _pyplot()
    levels = [(k, label) for k, label in LEVELS if before.get(k) is not None or after.get(k) is not None]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = range(len(levels))
    ax.bar([i - 0.2 for i in x], [before.get(k) or 0 for k, _ in levels], 0.4, label="before", color="tab:gray")
    ax.bar([i + 0.2 for i in x], [after.get(k) or 0 for k, _ in levels], 0.4, label=_stage_label(after), color="tab:blue")
    ax.set_xticks(list(x), [label for _, label in levels])
    ax.set_ylabel("ROUGE-L recall ×100")
    ax.set_title("Per probe level (forget: lower is better; neighbour: higher)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- run report

def example_probes(before: list[dict], after: list[dict], n_forget: int = 6, n_neighbour: int = 3) -> Table:
    """The forget probes whose score fell most, and the neighbour probes first in the file, with both answers."""
    pairs = [(b, a) for b, a in zip(before, after) if b["query"] == a["query"] and b["set"] == a["set"]]
    forget = sorted((p for p in pairs if p[0]["set"].startswith("forget")), key=lambda p: p[1]["score"] - p[0]["score"])
    neighbour = [p for p in pairs if p[0]["set"].startswith("neighbor")]
    rows = [[b["set"], b["query"], b["answer"], f"{b['prediction']} ({b['score']:.0f})", f"{a['prediction']} ({a['score']:.0f})"]
            for b, a in forget[:n_forget] + neighbour[:n_neighbour]]
    return Table(["Set", "Probe", "Reference", "Before (score)", "After (score)"], rows)


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("atu", "torch", "transformers", "peft", "sentence-transformers", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_report(folder: Path) -> Path:
    """Write report.md and report.html (with PNG plots beside them) for a run or compare folder; returns the HTML path."""
    folder = Path(folder)
    if (folder / "run.json").exists() and (folder / "config.yaml").exists():
        return _run_report(folder)
    if (folder / "compare.csv").exists():
        return _compare_report(folder)
    raise AtuError(f"{folder} is neither a run folder (run.json, config.yaml) nor a compare folder (compare.csv); "
                   "pass a folder atu unlearn or atu compare wrote")


def _run_report(folder: Path) -> Path:
    from .pipeline import read_evals

    run = json.loads((folder / "run.json").read_text())
    history = read_evals(folder) if (folder / "metrics.jsonl").exists() else []
    config_text = (folder / "config.yaml").read_text()
    model = _config_value(config_text, "model")
    title = f"Unlearning {run['target']} with {run['method']}"
    intro = (f"Model `{model}`, device {run.get('device')}, status {run.get('status')}, "
             f"{run.get('seconds', 0) or 0:.0f} s, {run.get('trainable_parameters') or 0:,} trainable parameters.")
    sections: list[tuple[str, list]] = []  # (heading, [Table | str (paragraph) | ("img", file, alt)])
    if history:
        sections.append(("Before and after", [stage_table(history), change_summary(history)]))
        plot_stages(history, folder / "fig_stages.png")
        plot_tradeoff(history, folder / "fig_tradeoff.png")
        plot_levels(history[0], history[-1], folder / "fig_levels.png")
        sections.append(("Plots", [("img", "fig_stages.png", "scores per stage"),
                                   ("img", "fig_tradeoff.png", "trade-off across stages"),
                                   ("img", "fig_levels.png", "per-level bars")]))
        first, last = folder / "predictions" / "before.json", folder / "predictions" / f"{history[-1]['stage']}.json"
        if len(history) > 1 and first.exists() and last.exists():
            sections.append(("Example probes", [example_probes(json.loads(first.read_text()), json.loads(last.read_text())),
                                                "Forget probes whose score fell most, then the first neighbour probes."]))
    else:
        sections.append(("Before and after", ["No evaluation was recorded (no probes for this target, or the run "
                                              "stopped before its first evaluation)."]))
    if run.get("utility"):
        sections.append(("Utility", [utility_table_of(run["utility"])]))
    attacks = folder / "attacks" / "attacks.json"
    if attacks.exists():
        from .attacks import table as attack_table
        sections.append(("Robustness (is it gone or hidden?)", [attack_table(json.loads(attacks.read_text()))]))
    notes = [f"Forget corpus: {run.get('forget_corpus')} ({run.get('forget_passages')} passages); other targets in "
             f"alignment: {', '.join(run.get('other_targets', [])) or 'none'}."] + list(run.get("notes", []))
    if run.get("error"):
        notes.insert(0, f"The run stopped: {run['error']}")
    sections.append(("Notes", notes))
    used = run.get("versions") or versions()
    sections.append(("Versions", [", ".join(f"{k} {v}" for k, v in used.items())]))
    sections.append(("Configuration", [("pre", config_text)]))
    return _write(folder, title, intro, sections)


def _config_value(config_text: str, section: str) -> str:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(config_text)
    return str(cfg[section].name_or_path)


# ---------------------------------------------------------------- compare report

def _compare_report(folder: Path) -> Path:
    import csv

    from .compare import plot, table

    with (folder / "compare.csv").open() as f:
        rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
    plot(rows, folder / "tradeoff.png")
    runs = sorted({r["run_dir"] for r in rows if r.get("run_dir")})
    links = []
    for run_dir in runs:
        path = Path(run_dir)
        moved = folder / path.parent.name / path.name  # compare folders keep runs as <target>/<method>/
        path = moved if (moved / "run.json").exists() else path
        if (path / "run.json").exists():
            _run_report(path)
            links.append(("link", os.path.relpath(path / "report.html", folder), f"{path.parent.name} / {path.name}"))
    sections = [("Comparison", [table(rows), SCORES]),
                ("Trade-off", [("img", "tradeoff.png", "forget-all vs neighbour-all per method")]),
                ("Runs", links or ["No run folders found."]), ("Versions", [", ".join(f"{k} {v}" for k, v in versions().items())])]
    return _write(folder, f"Comparison: {', '.join(dict.fromkeys(str(r['method']) for r in rows))}",
                  f"Targets: {', '.join(sorted({str(r['target']) for r in rows}))}.", sections)


def _parse(value: str):
    if value == "":
        return None
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value


# ---------------------------------------------------------------- writing

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;margin:.5em 0}
img.plot{max-width:49%;vertical-align:top}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}h1{font-size:24px}h2{font-size:19px;
margin-top:1.6em;border-bottom:1px solid #ddd}"""


def _write(folder: Path, title: str, intro: str, sections) -> Path:
    """Both files from one list of sections, so report.md and report.html never disagree."""
    md, body = [f"# {title}", "", intro, "", SCORES, ""], [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro.replace('`', ''))}</p>"]
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
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    write_text(folder / "report.md", "\n".join(md))
    write_text(folder / "report.html", page)
    return folder / "report.html"
