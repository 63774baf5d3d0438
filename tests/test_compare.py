"""`atu compare` as a user runs it: two methods on a tiny model, a table, a plot, and a resumed second call."""

import csv
import json

import pytest

from test_cli import atu

ARGS = [
    "model=tiny",
    "eval.max_probes_per_file=1",
    "data.max_passages=3",
    "ga:method.steps=2",
    "ga:method.batch_size=2",
]


def test_compare_writes_table_plot_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    r = atu("compare", "--methods", "icu,ga", "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (out / "compare.md").read_text()
    assert "| before | Warren Buffett |" in table and "| ga | Warren Buffett |" in table and "| icu |" in table
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert "Retain all" in table  # other known people's probes, beside the neighbours
    answers = table.split("What kind of answers")[1]  # per method, before and after: the share of each type
    for method in ("before", "icu", "ga"):
        row = next(line for line in answers.splitlines() if line.startswith(f"| {method} |"))
        shares = [float(c) for c in row.split("|")[3:8]]  # % forget answers correct, wrong, refusal, off-format, empty
        assert abs(sum(shares) - 100) < 0.5, row
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {r["method"] for r in rows} == {"icu", "ga"} and {r["stage"] for r in rows} == {"before", "unlearn1"}
    ga_run = json.loads((out / "Warren_Buffett" / "ga" / "run.json").read_text())
    assert ga_run["trainable_parameters"] > 0 and ga_run["status"] == "done"
    ga_before = next(
        json.loads(line)
        for line in (out / "Warren_Buffett" / "ga" / "metrics.jsonl").read_text().splitlines()
        if '"stage": "before"' in line
    )
    assert ga_before["reused_from"].endswith("icu")  # one "before" evaluation per target, shared by the methods
    assert (out / "Warren_Buffett" / "ga" / "predictions" / "before.json").exists()
    stamp = (out / "Warren_Buffett" / "ga" / "run.json").stat().st_mtime
    again = atu("compare", "--methods", "icu,ga", "--out", str(out), "--attacks", "quant4", *ARGS)
    assert again.returncode == 0 and "already done" in again.stderr, again.stderr[-2000:]
    assert (out / "Warren_Buffett" / "ga" / "run.json").stat().st_mtime == stamp
    assert "quant4: forget_all" in (out / "compare.md").read_text()  # the robustness numbers join the table
    page = (out / "report.html").read_text()  # the comparison's report links every run's own report
    for method in ("icu", "ga"):
        assert f'href="Warren_Buffett/{method}/report.html"' in page
        assert (out / "Warren_Buffett" / method / "report.html").exists()
    assert 'src="tradeoff.png"' in page and "quant4: forget_all" in page


def test_compare_rejects_bad_method_lists_before_running_anything(tmp_path):
    out = tmp_path / "cmp"
    r = atu("compare", "--methods", "ga,gaa", "--out", str(out), "model=tiny")
    assert r.returncode == 2 and "unknown method 'gaa'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = atu("compare", "--methods", "ga", "--out", str(out), "npo:method.beta=1")
    assert r.returncode == 2 and "not in --methods" in r.stderr
    r = atu("compare", "--methods", "ga", "--seeds", "two", "--out", str(out), "model=tiny")
    assert r.returncode == 2 and "--seeds two: give a whole number" in r.stderr and not out.exists()
    r = atu("compare", "--methods", "ga", "--seeds", "2", "--out", str(out), "model=tiny", "run.seed=3")
    assert r.returncode == 2 and "drop run.seed" in r.stderr and not out.exists()


def test_target_means_average_methods_over_all_and_known_targets_with_attack_columns():
    from atu.compare import COLUMNS, target_means

    def row(method, target, forget, attack=None):
        r = {"method": method, "target": target, **{k: None for k in COLUMNS}, "forget_all": forget}
        return r | ({"quant4: forget_all": attack} if attack is not None else {})

    finals = [
        row("before", "A", 30.0, 30.0),
        row("before", "B", 5.0, 5.0),  # the model knows A (≥ 15), not B
        row("atu", "A", 10.0, 4.0),
        row("atu", "B", 2.0, 1.0),
        row("ga", "A", 0.0),
    ]
    means = {(m["method"], m["target"]): m for m in target_means(finals)}
    assert means[("atu", "mean of 2 targets")]["forget_all"] == 6.0
    assert means[("atu", "mean of 1 known")]["forget_all"] == 10.0
    assert means[("atu", "mean of 2 targets")]["quant4: forget_all"] == 2.5
    assert means[("ga", "mean of 2 targets")]["forget_all"] == 0.0  # only the targets a method ran on
    assert means[("ga", "mean of 2 targets")].get("quant4: forget_all") is None


def test_several_seeds_become_one_row_per_target_with_the_standard_deviation():
    from atu.compare import COLUMNS, final_rows, seed_means, table, target_means

    def row(method, target, seed, stage, forget):
        return {"method": method, "target": target, "seed": seed, "stage": stage, **{k: None for k in COLUMNS}} | {
            "forget_all": forget
        }

    rows = [
        row("atu", "A", 0, "before", 30.0),
        row("atu", "A", 0, "unlearn1", 20.0),
        row("atu", "A", 0, "unlearn2", 10.0),  # the last stage is the unlearned model
        row("atu", "A", 1, "before", 30.0),
        row("atu", "A", 1, "unlearn2", 14.0),
        row("atu", "B", 0, "before", 20.0),
        row("atu", "B", 0, "unlearn2", 6.0),
        row("atu", "B", 1, "before", 20.0),
        row("atu", "B", 1, "unlearn2", 2.0),
    ]
    finals = final_rows(rows)
    per_target = {(r["method"], r["target"]): r for r in seed_means(finals)}
    assert per_target[("atu", "A")]["forget_all"] == 12.0 and per_target[("atu", "A")]["n_runs"] == 2
    assert per_target[("atu", "A")]["forget_all_sd"] == pytest.approx(2 * 2**0.5)  # stdev of 10 and 14
    assert per_target[("before", "A")]["forget_all"] == 30.0 and "forget_all_sd" not in per_target[("before", "A")]
    overall = {(r["method"], r["target"]): r for r in target_means(finals)}[("atu", "mean of 2 targets")]
    assert overall["forget_all"] == 8.0  # over targets and seeds: 10, 14, 6, 2
    assert overall["forget_all_sd"] == pytest.approx(5.163977, abs=1e-6)
    assert "| atu | A | – | – | – | 12.0 ± 2.8 |" in table(rows).markdown()
