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
    "eval.every=1",  # GA is also evaluated after its first step: a two-point front
]


def test_compare_writes_table_plot_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    r = atu("compare", "--methods", "icu,ga", "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (out / "compare.md").read_text()
    assert "| before | Cindy Crawford |" in table and "| ga | Cindy Crawford |" in table and "| icu |" in table
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert "Retain all" in table  # other known people's probes, beside the neighbours
    answers = table.split("What kind of answers")[1]  # per method, before and after: the share of each type
    for method in ("before", "icu", "ga"):
        row = next(line for line in answers.splitlines() if line.startswith(f"| {method} |"))
        shares = [float(c) for c in row.split("|")[3:8]]  # % forget answers correct, wrong, refusal, off-format, empty
        assert abs(sum(shares) - 100) < 0.5, row
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {r["method"] for r in rows} == {"icu", "ga"}
    assert [r["stage"] for r in rows if r["method"] == "ga"] == ["before", "unlearn1@1", "unlearn1"]
    assert "Matched forgetting" in table and (out / "front_retain.png").stat().st_size > 10_000
    assert "| ga | Cindy Crawford |" in table.split("Matched forgetting")[1]
    ga_run = json.loads((out / "Cindy_Crawford" / "ga" / "run.json").read_text())
    assert ga_run["trainable_parameters"] > 0 and ga_run["status"] == "done"
    ga_before = next(
        json.loads(line)
        for line in (out / "Cindy_Crawford" / "ga" / "metrics.jsonl").read_text().splitlines()
        if '"stage": "before"' in line
    )
    assert ga_before["reused_from"].endswith("icu")  # one "before" evaluation per target, shared by the methods
    assert (out / "Cindy_Crawford" / "ga" / "predictions" / "before.json").exists()
    stamp = (out / "Cindy_Crawford" / "ga" / "run.json").stat().st_mtime
    again = atu("compare", "--methods", "icu,ga", "--out", str(out), "--attacks", "quant4", *ARGS)
    assert again.returncode == 0 and "already done" in again.stderr, again.stderr[-2000:]
    assert (out / "Cindy_Crawford" / "ga" / "run.json").stat().st_mtime == stamp
    assert "quant4: forget_all" in (out / "compare.md").read_text()  # the robustness numbers join the table
    page = (out / "report.html").read_text()  # the comparison's report links every run's own report
    for method in ("icu", "ga"):
        assert f'href="Cindy_Crawford/{method}/report.html"' in page
        assert (out / "Cindy_Crawford" / method / "report.html").exists()
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
    # the attack column's spread is shown in it ("2.5 ± 2.1"), never as a column of its own
    from atu.report import compare_table

    shown = compare_table(target_means(finals), list(COLUMNS))
    assert [h for h in shown.headers if "quant4" in h] == ["quant4: forget_all"]
    assert any("2.5 ± 2.1" in cell for body in shown.rows for cell in body)


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


def test_a_collected_seed_sweep_shares_one_label_and_a_setting_sweep_keeps_one_per_folder(tmp_path):
    from atu.compare import sweep_labels
    from atu.runs import Run

    def run(name, seed, lr, method="atu", target="Cindy Crawford", passages=32, every=0, encoder="float32"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"method": method, "target": target, "status": "done"}))
        (folder / "config.yaml").write_text(
            f"run: {{seed: {seed}}}\neval: {{every: {every}}}\ndata: {{max_passages: {passages}}}\n"
            f"method: {{name: {method}, unlearn_lr: {lr}}}\nencoder: {{precision: {encoder}}}\n"
        )
        return Run(folder)

    seeds = [run("atu-seed0", 0, 1e-5), run("atu-seed1", 1, 1e-5), run("ga-seed0", 0, 1e-5, method="ga")]
    assert sweep_labels(seeds, tmp_path) == ["atu", "atu", "ga"]  # seeds of one setting: one row, mean ± sd
    lrs = [run("lr-a", 0, 1e-5, target="Mark Cuban"), run("lr-b", 1, 3e-6, target="Mark Cuban")]
    assert sweep_labels(lrs, tmp_path) == ["atu [lr-a]", "atu [lr-b]"]  # another learning rate is another row
    twice = [run("again-a", 0, 1e-5, target="Jim Parsons"), run("again-b", 0, 1e-5, target="Jim Parsons")]
    assert sweep_labels(twice, tmp_path) == ["atu [again-a]", "atu [again-b]"]  # the same seed twice: both shown
    data = [run("data-a", 0, 1e-5, target="Jim Morrison"), run("data-b", 1, 1e-5, target="Jim Morrison", passages=8)]
    assert sweep_labels(data, tmp_path) == ["atu [data-a]", "atu [data-b]"]  # other training data: not a seed
    every = [run("every-a", 0, 1e-5, target="Mark Cuban", every=10), run("every-b", 1, 1e-5, target="Mark Cuban")]
    assert sweep_labels(every, tmp_path) == ["atu", "atu"]  # evaluation bookkeeping does not split seeds
    # the encoder's settings split ATU's runs (it trains against the encoder) but not NPO's (it never loads it)
    atu_enc = [
        run("enc-a", 0, 1e-5, target="Jim Parsons"),
        run("enc-b", 1, 1e-5, target="Jim Parsons", encoder="auto"),
    ]
    assert sweep_labels(atu_enc, tmp_path) == ["atu [enc-a]", "atu [enc-b]"]
    npo_enc = [
        run("npo-a", 0, 1e-5, "npo", "Jim Parsons"),
        run("npo-b", 1, 1e-5, "npo", "Jim Parsons", encoder="auto"),
    ]
    assert sweep_labels(npo_enc, tmp_path) == ["npo", "npo"]


def test_fronts_keep_the_points_no_other_point_beats_and_say_which_front_dominates():
    from atu.compare import dominates, fronts_table, relation
    from atu.report import pareto_front

    points = [(10.0, 20.0), (5.0, 18.0), (5.0, 15.0), (8.0, 10.0), (2.0, 9.0), (12.0, 25.0)]
    assert pareto_front(points) == [(2.0, 9.0), (5.0, 18.0), (10.0, 20.0), (12.0, 25.0)]
    a, b = [(2.0, 20.0), (6.0, 25.0)], [(3.0, 19.0), (7.0, 24.0)]
    assert (
        dominates(a, b) and not dominates(b, a) and relation(a, b) == "dominates" and relation(b, a) == "is dominated"
    )
    assert relation([(1.0, 10.0)], [(5.0, 20.0)]) == "crosses" and relation(a, a) == "equal"

    def row(method, stage, forget, retain, seed=0):
        return {
            "method": method,
            "target": "A",
            "seed": seed,
            "stage": stage,
            "forget_all": forget,
            "retain_all": retain,
        }

    rows = [
        row("before", "before", 30.0, 20.0),
        row("atu", "unlearn1", 20.0, 19.5),
        row("atu", "unlearn2", 10.0, 17.0),  # 85% of retain: counts for the 80% column only
        row("ga", "unlearn1@10", 12.0, 18.5),
        row("ga", "unlearn1", 0.0, 2.0),
        row("ga", "unlearn1@10", 14.0, 18.0, seed=1),
        row("ga", "unlearn1", 1.0, 3.0, seed=1),
    ]
    body = {r[0]: r for r in fronts_table(rows).rows}
    assert body["atu"][3:5] == ["20.0 (unlearn1)", "10.0 (unlearn2)"]
    assert body["ga"][3] == "13.0 (unlearn1@10, unlearn1@10)"  # the mean over seeds, and where each was reached
    assert body["ga"][5] == "crosses"  # ATU keeps more at 10-20, GA forgets everything at a loss
