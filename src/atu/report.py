"""Tables for the terminal and report.md: scores before unlearning and after every unlearning stage."""
from __future__ import annotations

from pathlib import Path

COLUMNS = [("forget_fb", "Forget FB ↓"), ("forget_qa", "Forget QA ↓"), ("forget_aa", "Forget AA ↓"),
           ("forget_all", "Forget all ↓"), ("neighbor_fb", "Neighbour FB ↑"), ("neighbor_qa", "Neighbour QA ↑"),
           ("neighbor_all", "Neighbour all ↑"), ("rephrase", "Rephrase ↓"), ("multihop", "Multi-hop ↓")]


def _columns(history):
    return [(k, label) for k, label in COLUMNS if any(k in row for row in history)]


def _stage_label(row) -> str:
    return row["stage"] + (f" (τ={row['tau']:.3f})" if "tau" in row else "")


def _cell(row, key) -> str:
    return f"{row[key]:.1f}" if key in row else "–"


def markdown_table(history: list[dict]) -> str:
    cols = _columns(history)
    lines = ["| Stage | " + " | ".join(label for _, label in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in history:
        lines.append(f"| {_stage_label(row)} | " + " | ".join(_cell(row, k) for k, _ in cols) + " |")
    return "\n".join(lines)


def change_summary(history: list[dict]) -> str:
    if len(history) < 2:
        return ""
    before, after = history[0], history[-1]
    parts = []
    for key, name in (("forget_all", "forget-all"), ("neighbor_all", "neighbour-all")):
        if key in before and key in after and before[key] > 0:
            parts.append(f"{name} {before[key]:.1f} → {after[key]:.1f} ({100 * (after[key] / before[key] - 1):+.0f}%)")
    return "; ".join(parts)


def utility_table(utility: dict) -> str:
    """Utility before/after with each score's chance level (a small model sits near chance on several)."""
    first = next(iter(utility.values()))
    cols = list(utility)
    lines = ["| Utility | " + " | ".join(cols) + " | chance |", "|---|" + "---:|" * (len(cols) + 1)]
    for key, chance in first["chance"].items():
        cells = [f"{utility[c]['scores'][key]:.3f}" for c in cols]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {'–' if chance is None else f'{chance:.3f}'} |")
    return "\n".join(lines)


def write_report(out: Path, history: list[dict], run_info: dict, cfg) -> None:
    from omegaconf import OmegaConf

    text = [f"# Unlearning {run_info['target']} with {run_info['method']}", "",
            f"Model `{cfg.model.name_or_path}`, encoder `{cfg.encoder.name_or_path}`, device {run_info['device']}, "
            f"{run_info.get('seconds', 0):.0f} s. Scores: ROUGE-L recall ×100 of the reference answer in the model's "
            "greedy answer (RWKU protocol); ↓ lower is better (forgotten), ↑ higher is better (kept).", ""]
    if history:
        text += [markdown_table(history), "", change_summary(history), ""]
    else:
        text += ["No probes were available for this target, so nothing was evaluated.", ""]
    if run_info.get("utility"):
        text += [utility_table(run_info["utility"]), ""]
    for note in run_info.get("notes", []):
        text.append(f"- {note}")
    text += ["", f"Forget corpus: {run_info.get('forget_corpus')} ({run_info.get('forget_passages')} passages); "
             f"other targets in alignment: {', '.join(run_info.get('other_targets', [])) or 'none'}.", "",
             "## Configuration", "", "```yaml", OmegaConf.to_yaml(cfg).strip(), "```", ""]
    (out / "report.md").write_text("\n".join(text))


def print_table(history: list[dict]) -> None:
    if not history:
        return
    from rich.console import Console
    from rich.table import Table

    cols = _columns(history)
    table = Table(title="RWKU probes (ROUGE-L recall ×100)")
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
