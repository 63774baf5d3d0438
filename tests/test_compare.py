"""`atu compare` as a user runs it: two methods on a tiny model, a table, a plot, and a resumed second call."""

import csv
import json

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
