"""The command as a user runs it: tiny model end to end, and one clear line for each bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = ["model=tiny", "target=Stephen King", "method.align_steps=10", "method.realign_steps=3", "method.unlearn_steps=3",
        "method.taus=[0.3,0.1]", "data.max_passages=6", "data.other_targets=1", "eval.max_probes_per_file=2",
        "method.unlearn_params=below_hook", "method.hook_layer=2", "method.unlearn_lr=1e-3"]


def atu(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "atu.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_tiny_unlearn_run_writes_a_complete_loadable_run_folder(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from atu.models import decoder_layers, tiny_lm

    out = tmp_path / "run"
    r = atu("unlearn", *TINY, f"run.output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("config.yaml", "run.json", "metrics.jsonl", "report.md", "head.safetensors", "model/config.json",
                 "predictions/before.json", "predictions/unlearn1.json", "predictions/unlearn2.json"):
        assert (out / name).exists(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["target"] == "Stephen King" and len(run["other_targets"]) == 1
    events = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["stage"] for e in evals] == ["before", "unlearn1", "unlearn2"]
    assert [e["tau"] for e in evals[1:]] == [0.3, 0.1]
    assert "forget_all" in evals[0] and "neighbor_all" in evals[0]
    assert "| before |" in (out / "report.md").read_text()
    assert set(load_file(out / "head.safetensors")) and json.loads((out / "head.json").read_text())["hook_layer"] == 2

    # the saved model reloads with plain transformers; blocks 1..2 changed, blocks above the hook and embeddings did not
    original, unlearned = tiny_lm(seed=0), AutoModelForCausalLM.from_pretrained(out / "model")
    changed = [not torch.equal(a, b) for a, b in zip(decoder_layers(original).parameters(), decoder_layers(unlearned).parameters())]
    per_block = len(list(decoder_layers(original)[0].parameters()))
    assert any(changed[:2 * per_block])
    assert not any(changed[2 * per_block:])
    assert torch.equal(original.get_input_embeddings().weight, unlearned.get_input_embeddings().weight)

    # `atu eval RUN_DIR` evaluates the saved model on the run's target
    r = atu("eval", str(out), "eval.max_probes_per_file=2", "--out", str(tmp_path / "eval.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    sets = {r["set"] for r in result["predictions"]}
    assert result["target"] == "Stephen King" and {"forget_fb", "forget_qa", "forget_aa", "neighbor_qa"} <= sets
    assert result["metrics"]["n_probes"] == 2 * len(sets)  # eval.max_probes_per_file=2


@pytest.mark.parametrize("args, message", [
    (["target=Warren Bufett"], "unknown target 'Warren Bufett'. Did you mean: Warren Buffett"),
    (["method=atu_typo"], "unknown method 'atu_typo'"),
    (["method.tauss=[0.5]"], "bad method setting 'tauss'"),
    (["method.taus=[1.5]"], "outside [-1, 1]"),
    (["method.taus=[0.3,0.5]"], "must not increase"),
    (["method.unlearn_steps=-1"], "must be positive"),
    (["method.unlearn_batch_size=0"], "must be at least 1"),
    (["model.name_or_path=/nonexistent/model"], "does not exist"),
    (["model.name_or_path=/tmp/none.gguf"], "does not exist"),
    (["method.hook_layer=9"], "outside this model's 1..4 layers"),
    (["data.forget_corpus=EMPTY"], "is empty"),
    (["data.max_length=100000"], "exceeds the model's context"),
    (["eval.batch_size=0"], "must be at least 1"),
    (["encoder.name_or_path=/nonexistent/enc"], "does not exist"),
])
def test_bad_input_gives_one_line_and_leaves_no_run_folder(tmp_path, args, message):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    args = [a.replace("EMPTY", str(empty)) for a in args]
    out = tmp_path / "run"
    r = atu("unlearn", "model=tiny", "target=Stephen King", *args, f"run.output_dir={out}")
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("atu: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = atu("unlearn", "model=tiny", "target=Stephen King", f"run.output_dir={out}")
    assert r.returncode == 2 and "already exists" in r.stderr and (out / "keep.txt").exists()


def test_eval_without_probes_is_a_clear_message():
    r = atu("eval", "model=tiny", "target=Ada Lovelace", "data.allow_new_target=true")
    assert r.returncode == 2 and "no probes exist for Ada Lovelace" in r.stderr
