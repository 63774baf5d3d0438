"""The command as a user runs it: tiny model end to end (bad inputs: test_bad_input.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_atu

from atu import runs
from atu.methods.atu import HEAD_FILES

TINY = [
    "model=tiny",
    "target=Stephen King",
    "method.align_steps=10",
    "method.realign_steps=3",
    "method.unlearn_steps=3",
    "method.taus=[0.3,0.1]",
    "data.max_passages=3",
    "data.other_targets=1",
    "eval.max_probes_per_file=2",
    "method.unlearn_params=below_hook",
    "method.hook_layer=2",
    "method.unlearn_lr=1e-3",
    "method.head_width=64",
    "method.head_layers=1",
    "method.head_heads=2",
]


def atu(*args):
    return run_atu(*args)


def test_tiny_unlearn_run_writes_a_complete_loadable_run_folder(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from atu.models import TINY_VOCAB, decoder_layers, tiny_lm

    out = tmp_path / "run"
    r = atu("unlearn", *TINY, f"run.output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "report.md",
        "head.safetensors",
        "model/config.json",
        "predictions/before.json",
        "predictions/unlearn1.json",
        "predictions/unlearn2.json",
    ):
        assert (out / name).exists(), name
    # every file the run wrote, and nothing else (each through atu.runs' atomic writers: no *.tmp is left behind)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(
        [runs.CONFIG, runs.INFO, runs.METRICS, *runs.REPORT, "fig_levels.png", "fig_stages.png", "fig_tradeoff.png"]
        + [f"{runs.PREDICTIONS}/{stage}.json" for stage in ("before", "unlearn1", "unlearn2")]
        + list(HEAD_FILES)
        + [f"{runs.ATTACKS}/attacks.json", f"{runs.ATTACKS}/attacks.md"]  # the update_size diagnostic
        + [f"{runs.MODEL}/{name}" for name in ("config.json", "generation_config.json", "model.safetensors")]
        + [f"{runs.MODEL}/{name}" for name in ("tokenizer.json", "tokenizer_config.json")]
    ), written
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["target"] == "Stephen King" and len(run["other_targets"]) == 1
    from atu.models import fast_bf16  # encoder.precision=auto: bf16 only where this CPU has fast bf16, recorded

    assert run["encoder_precision"] == ("bf16" if fast_bf16("cpu") else "float32")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["stage"] for e in evals] == ["before", "unlearn1", "unlearn2"]
    assert [e["tau"] for e in evals[1:]] == [0.3, 0.1]
    assert "forget_all" in evals[0] and "neighbor_all" in evals[0]
    starts = [e for e in events if e["event"] == "stage_start"]  # ATU's caching forward before each stage, timed
    assert [e["stage"] for e in starts][:2] == ["align", "unlearn1"] and all(e["setup_seconds"] >= 0 for e in starts)
    assert "| before |" in (out / "report.md").read_text()
    # would quantization undo it? the update against the 8-bit step, in the run's own robustness table
    sizes = {r["metric"]: r["after"] for r in json.loads((out / runs.ATTACKS / "attacks.json").read_text())}
    assert 0 < sizes["int8_codes_changed"] <= 100 and sizes["update_over_int8_step_p99"] > 0
    assert "update_size" in (out / "report.md").read_text().split("Robustness")[1]
    assert set(load_file(out / "head.safetensors")) and json.loads((out / "head.json").read_text())["hook_layer"] == 2

    # the saved model reloads with plain transformers; blocks 1..2 changed, the blocks above and embeddings did not
    original, unlearned = tiny_lm(seed=0, vocab=TINY_VOCAB), AutoModelForCausalLM.from_pretrained(out / "model")
    changed = [
        not torch.equal(a, b)
        for a, b in zip(decoder_layers(original).parameters(), decoder_layers(unlearned).parameters())
    ]
    per_block = len(list(decoder_layers(original)[0].parameters()))
    assert any(changed[: 2 * per_block])
    assert not any(changed[2 * per_block :])
    assert torch.equal(original.get_input_embeddings().weight, unlearned.get_input_embeddings().weight)

    # `atu eval RUN_DIR` evaluates the saved model on the run's target
    r = atu("eval", str(out), "eval.max_probes_per_file=2", "--out", str(tmp_path / "eval.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    sets = {r["set"] for r in result["predictions"]}
    assert result["target"] == "Stephen King" and {"forget_fb", "forget_qa", "forget_aa", "neighbor_qa"} <= sets
    own = sets - {"retain_fb", "retain_qa"}
    retain = result["metrics"]["retain_targets"].split(", ")  # other known people: 2 probes per level of each
    assert len(retain) == 3 and "Stephen King" not in retain and {"retain_fb", "retain_qa"} <= sets
    assert result["metrics"]["n_probes"] == 2 * len(own) + 2 * 2 * len(retain)  # eval.max_probes_per_file=2
    assert "retain_all" in result["metrics"]
    # the terminal shows the probe levels, then AA per attack type, RWKU's MIA figures and the answer types
    for title in ("Forget AA per attack type:", "RWKU's MIA:", "Answer types:", "scorer: rwku"):
        assert title in r.stdout, r.stdout[-3000:]
    assert "MIA FM (forget NLL ×100)" in r.stdout.split("RWKU's MIA:")[1]


def test_robustness_levers_run_together_from_the_command_line(tmp_path):
    """Every lever of docs/robustness.md at once through the CLI: SAM, the latent adversary, saliency rows and the
    reworded forget corpus (kept in the run folder, where a resumed run reads it back; the report says it was used)."""
    out = tmp_path / "run"
    levers = ["method.sam_rho=0.05", "method.latent_eps=0.1", "method.latent_layer=1", "method.saliency_rows=0.1"]
    r = atu("unlearn", *TINY, *levers, "data.reword_forget=true", "eval.mia=false", f"run.output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert isinstance(json.loads((out / runs.REWORDED_CORPUS).read_text()), list)
    assert "data.reword_forget" in (out / "report.md").read_text()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "stage_start" and e["stage"] == "unlearn1"]
    assert starts[0]["saliency_rows_trained"] > 0


def test_atu_with_lora_trains_adapters_below_the_hook_and_saves_the_merged_model(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from atu.models import TINY_VOCAB, decoder_layers, tiny_lm

    out = tmp_path / "run"
    r = atu(
        "unlearn",
        *TINY,
        "method.lora=true",
        "method.lora_r=4",
        "method.lora_alpha=8",
        "method.unlearn_lr=1e-2",
        "method.unlearn_optimizer=adam",
        f"run.output_dir={out}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    blocks = {int(k.split(".layers.")[1].split(".")[0]) for k in adapter}
    assert blocks == {0, 1}  # hook layer 2: adapters only where the unlearning forward runs
    original, unlearned = tiny_lm(seed=0, vocab=TINY_VOCAB), AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in n for n, _ in unlearned.named_parameters())  # a plain model: adapters merged in
    run = json.loads((out / "run.json").read_text())
    assert run["trainable_parameters"] == sum(v.numel() for v in adapter.values())
    assert run["trainable_parameters"] < sum(p.numel() for p in decoder_layers(original)[:2].parameters()) / 5

    # merged weight = original + (alpha / r) · B A, for a module the adapter changed
    key = next(k for k in adapter if "layers.1.mlp.down_proj.lora_B" in k)
    a, b = adapter[key.replace("lora_B", "lora_A")], adapter[key]
    assert b.abs().sum() > 0  # B starts at zero: unlearning moved it
    w0, w1 = original.model.layers[1].mlp.down_proj.weight, unlearned.model.layers[1].mlp.down_proj.weight
    assert torch.allclose(w1, w0 + (8 / 4) * b @ a, atol=1e-6)
    per_block = len(list(decoder_layers(original)[0].parameters()))
    changed = [
        not torch.equal(x, y)
        for x, y in zip(decoder_layers(original).parameters(), decoder_layers(unlearned).parameters())
    ]
    assert any(changed[: 2 * per_block]) and not any(changed[2 * per_block :])


def test_entry_points_keep_bitsandbytes_optional_kernel_warnings_off_the_terminal():
    """On CPUs with avx512_bf16, importing bitsandbytes (peft and sentence-transformers do) warns that it could not
    fetch an optional kernel from the hub; atu's entry points silence that (elsewhere this passes either way)."""
    pytest.importorskip("bitsandbytes")
    code = "from atu.environment import offline_and_quiet; offline_and_quiet(); import sentence_transformers, peft"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels-community" not in done.stderr and "publisher trust" not in done.stderr, done.stderr[-2000:]


def test_atu_sweep_jobs_run_offline_even_when_a_launcher_imports_them_without_main():
    """`atu-sweep` sets HF_HUB_OFFLINE before huggingface_hub reads it (at import): a SLURM worker imports the module
    and runs `job` without `main`, and setting it inside `main` came after the import."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = "import atu.sweep, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
