"""Scale-out as users run it: `accelerate launch` with two CPU processes (gloo) gives one process's run, Hydra multirun
sweeps write one run folder per job that `atu compare --collect` gathers, and the SLURM launcher config resolves."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
TINY = ["model=tiny", "target=Stephen King", "method.align_steps=8", "method.realign_steps=4", "method.unlearn_steps=6",
        "method.taus=[0.3,0.1]", "data.max_passages=6", "data.other_targets=1", "eval.max_probes_per_file=1",
        "method.unlearn_params=below_hook", "method.hook_layer=2", "method.unlearn_lr=1e-3", "method.head_width=64",
        "method.head_layers=1", "method.head_heads=2", "method.align_batch_size=8", "method.unlearn_batch_size=8",
        # dropout masks are drawn per process, so equality with one process needs the head without dropout
        "method.head_dropout=0.0", "run.threads=1", "run.device=cpu"]
ACCELERATE = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "atu.cli"]


def run(cmd, **kw):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path (gloo) even where a GPU is visible
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, **kw)


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] in ("step", "stage_end")]


def assert_same_weights(one: Path, two: Path) -> dict:
    """The two runs' saved weights agree to float noise: their difference is < 0.1% of what unlearning changed (Adam
    turns the summation-order noise of near-zero gradients into full-size steps, so a per-element tolerance would be
    wrong). Returns the second run's weights."""
    from safetensors.torch import load_file

    from atu.models import tiny_lm

    start = tiny_lm(0).state_dict()
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    apart = sum((w1[k] - w2[k]).pow(2).sum() for k in w1).sqrt()
    moved = sum((w1[k] - start[k]).pow(2).sum() for k in w1).sqrt()
    assert moved > 0.1 and apart < 1e-3 * moved, (apart, moved)
    return w2


def test_two_processes_with_accelerate_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run([sys.executable, "-m", "atu.cli", "unlearn", *TINY, f"run.output_dir={one}"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([*ACCELERATE, "unlearn", *TINY, f"run.output_dir={two}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("[atu] done in") == 1  # one voice: only the main process reports and writes

    a, b = steps(one), steps(two)
    assert [(x["stage"], x.get("step")) for x in a] == [(x["stage"], x.get("step")) for x in b]
    losses = [(x[k], y[k]) for x, y in zip(a, b) for k in ("align_loss", "unlearn_loss", "retain_drift") if k in x]
    assert len(losses) > 10 and any(x > 0 for x, _ in losses)
    for x, y in losses:  # each process holds half of every batch; the summed gradients are one process's
        assert y == pytest.approx(x, rel=1e-5, abs=1e-7)
    assert_same_weights(one, two)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_fsdp_with_the_shipped_config_matches_one_process_and_resumes_after_sigkill(tmp_path):
    """The shipped accelerate FSDP config on 2 CPU processes: blocks sharded (FSDP2), the same losses and weights as
    one process. Killed mid-stage, resumed: checkpoints gather the shards and the resumed run scatters them back."""
    import signal
    import time
    from importlib.resources import files

    from safetensors.torch import load_file

    from atu import checkpoint

    config = str(files("atu.config").joinpath("accelerate/fsdp.yaml"))
    fsdp = [str(BIN / "accelerate"), "launch", "--config_file", config, "--cpu", "--num_processes", "2", "-m", "atu.cli"]
    # Adam (sharded optimizer state) on every LM weight (replicated embeddings beside sharded blocks); stages long
    # enough for the kill to land inside one
    settings = [*TINY, "method.unlearn_params=all", "method.unlearn_optimizer=adam", "method.unlearn_steps=30",
                "run.checkpoint_every=4"]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    r = run([sys.executable, "-m", "atu.cli", "unlearn", *settings, f"run.output_dir={one}"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([*fsdp, "unlearn", *settings, f"run.output_dir={two}"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = steps(one), steps(two)
    losses = [(x[k], y[k]) for x, y in zip(a, b) for k in ("align_loss", "unlearn_loss") if k in x]
    assert len(losses) > 10 and all(y == pytest.approx(x, rel=1e-4, abs=1e-6) for x, y in losses)
    w2 = assert_same_weights(one, two)
    assert json.loads((two / "model" / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]

    proc = subprocess.Popen([*fsdp, "unlearn", *settings, f"run.output_dir={killed}"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = checkpoint.latest(killed / "checkpoints")
        try:
            pos = json.loads((latest / "state.json").read_text())["position"] if latest else None
        except (OSError, ValueError):
            pos = None
        if pos and pos["stage"] == 1 and pos["step"] > 0:  # inside the first unlearning stage: Adam state exists
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert not (killed / "model").exists(), "the run ended before it could be killed mid-stage"
    r = run([*fsdp, "unlearn", "--resume", str(killed)])
    assert r.returncode == 0, r.stderr[-3000:]
    w3 = load_file(killed / "model" / "model.safetensors")
    assert all(torch.allclose(w2[k], w3[k], rtol=0, atol=1e-6) for k in w2)
    unlearn_losses = lambda rows: [x["unlearn_loss"] for x in rows if "unlearn_loss" in x]
    assert len(unlearn_losses(b)) >= 8 and unlearn_losses(steps(killed)) == pytest.approx(unlearn_losses(b), rel=1e-6)


def test_a_single_process_method_refuses_several_processes(tmp_path):
    r = run([*ACCELERATE, "unlearn", "model=tiny", "method=ga", "run.device=cpu", f"run.output_dir={tmp_path / 'x'}"])
    assert r.returncode != 0 and "atu: error: method ga runs in one process" in r.stderr
    assert not (tmp_path / "x").exists()


def test_slurm_launcher_config_resolves():
    r = run([str(BIN / "atu-sweep"), "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
             "hydra.launcher.timeout_min=30"])
    assert r.returncode == 0, r.stderr[-2000:]
    from omegaconf import OmegaConf
    launcher = OmegaConf.create(r.stdout).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min == 30 and launcher.gpus_per_node == 1
    assert launcher.account is None  # nothing cluster-specific is hard-wired
    r = run([str(BIN / "atu-sweep"), "--cfg", "job", "hydra/launcher=slurm", "target=Bruce Lee", "method=ga"])
    assert r.returncode == 0, r.stderr[-2000:]
    job = OmegaConf.create(r.stdout)
    assert job.target == "Bruce Lee" and job.method.name == "ga" and job.method.losses == ["ga"]


def test_multirun_sweep_writes_one_run_folder_per_job_and_compare_collects_them(tmp_path):
    sweep = tmp_path / "sweep"
    r = run([str(BIN / "atu-sweep"), "--multirun", *TINY[:-2], "method.taus=[0.3],[0.3,0.1]",
             f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        run_info = json.loads((sweep / job / "run.json").read_text())
        assert run_info["status"] == "done" and (sweep / job / "report.html").exists()
    taus = [json.loads((sweep / j / "head.json").read_text())["thresholds"] for j in ("0", "1")]
    assert taus == [[0.3], [0.3, 0.1]]
    r = run([str(BIN / "atu"), "compare", "--collect", str(sweep)])
    assert r.returncode == 0, r.stderr[-2000:]
    table = (sweep / "compare.md").read_text()
    assert "| atu [0] | Stephen King |" in table and "| atu [1] | Stephen King |" in table
    # a re-launched sweep keeps the finished jobs
    stamp = (sweep / "0" / "run.json").stat().st_mtime
    r = run([str(BIN / "atu-sweep"), "--multirun", *TINY[:-2], "method.taus=[0.3],[0.3,0.1]", f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0 and "already done; kept" in r.stderr
    assert (sweep / "0" / "run.json").stat().st_mtime == stamp
    shutil.rmtree(sweep)


def test_gradient_checkpointing_keeps_the_losses_and_bf16_autocast_stays_close(tmp_path):
    plain, ckpt, bf16 = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "bf16"
    for out, extra in ((plain, []), (ckpt, ["run.gradient_checkpointing=true"]), (bf16, ["run.mixed_precision=bf16"])):
        r = run([sys.executable, "-m", "atu.cli", "unlearn", *TINY, *extra, f"run.output_dir={out}"])
        assert r.returncode == 0, r.stderr[-2000:]
    unlearn = lambda d: [x["unlearn_loss"] for x in steps(d) if "unlearn_loss" in x and x["event"] == "step"]
    assert unlearn(ckpt) == pytest.approx(unlearn(plain), rel=1e-5, abs=1e-7)  # recomputed activations, same maths
    align = lambda d: [x["align_loss"] for x in steps(d) if "align_loss" in x and x["event"] == "step"]
    assert align(bf16) == pytest.approx(align(plain), rel=2e-2) and align(bf16) != align(plain)  # bf16 ran
