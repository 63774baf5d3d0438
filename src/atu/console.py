"""What a user sees on the terminal: one-line messages, progress bars (on a terminal only, never in logs), and the
before/after table. With several processes only the main one speaks."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from . import metrics
from .distributed import is_main

SCORER_NAMES = {"rwku": "RWKU's scorer", "lenient": "lenient scorer, not RWKU's"}


def say(msg: str) -> None:
    if is_main():
        print(f"[atu] {msg}", file=sys.stderr, flush=True)


def _show_bars() -> bool:
    return sys.stderr.isatty() and is_main()


def progress(total: int, desc: str = "eval", initial: int = 0) -> tqdm:
    """A progress bar on stderr when it is a terminal (disabled, but usable, otherwise)."""
    return tqdm(total=total, desc=f"{desc:>10}", leave=False, initial=initial, disable=not _show_bars())


def stage_label(row: dict) -> str:
    return row["stage"] + (f" (τ={row['tau']:.3f})" if row.get("tau") is not None else "")


def eval_line(row: dict) -> str:
    """One evaluation in one line: the forget levels, forget-all, neighbour-all and retain-all."""
    keys = [k for k in (*metrics.FORGET, "forget_all", "neighbor_all", "retain_all") if k in row]
    tau = f" (tau={row['tau']:.3f})" if "tau" in row else ""
    return f"eval {row['stage']}{tau}: " + ", ".join(f"{k}={row[k]:.1f}" for k in keys) + f" [{row['eval_seconds']} s]"


def change_summary(history: list[dict]) -> str:
    if len(history) < 2:
        return ""
    before, after = history[0], history[-1]
    parts = []
    for key, name in (("forget_all", "forget-all"), ("neighbor_all", "neighbour-all"), ("retain_all", "retain-all")):
        if before.get(key) and after.get(key) is not None:
            parts.append(f"{name} {before[key]:.1f} → {after[key]:.1f} ({100 * (after[key] / before[key] - 1):+.0f}%)")
    return "; ".join(parts)


def score_columns(history: list[dict], brief: bool = False) -> list[str]:
    """The probe-set and aggregate keys present in any row, in registry order (`brief`: the compact tables' ones)."""
    keys = [m.key for m in metrics.REGISTRY.values() if m.kind in ("probes", "aggregate") and (m.brief or not brief)]
    return [k for k in keys if any(k in row for row in history)]


def print_table(history: list[dict]) -> None:
    if not history:
        return
    cols = score_columns(history, brief=True)
    scorer = history[0].get("scorer", "rwku")
    table = Table(title=f"RWKU probes (ROUGE-L recall ×100, {SCORER_NAMES.get(scorer, scorer)})")
    table.add_column("Stage")
    for key in cols:
        table.add_column(metrics.label(key), justify="right")
    for row in history:
        table.add_row(stage_label(row), *(f"{row[k]:.1f}" if row.get(k) is not None else "–" for k in cols))
    console = Console()
    console.print(table)
    summary = change_summary(history)
    if summary:
        console.print(summary)
