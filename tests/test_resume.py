"""Checkpoints and --resume: a run killed with SIGKILL mid-stage and resumed ends where an uninterrupted one does."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import run_atu

from atu import checkpoint

# checkpoints every 4 steps; ATU_TEST_KILL_AT makes the process SIGKILL itself right after a named checkpoint
RUN = [
    "model=tiny",
    "target=Stephen King",
    "method.align_steps=10",
    "method.realign_steps=5",
    "method.unlearn_steps=12",
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
    "run.checkpoint_every=4",
    "eval.every=4",  # points inside the unlearning stages, one of them right before the checkpoint the kill follows
]
TIMING = ("seconds", "eval_seconds", "setup_seconds")


def atu(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "atu.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_sigkill_mid_stage_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run_atu("unlearn", *RUN, f"run.output_dir={whole}")  # in this process: only the kill needs its own
    assert r.returncode == 0, r.stderr[-2000:]

    # killed without warning right after the checkpoint at step 8 of the first unlearning stage (stage 1, after align)
    r = atu("unlearn", *RUN, f"run.output_dir={killed}", env={"ATU_TEST_KILL_AT": "1:8"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert checkpoint.load(checkpoint.latest(killed / "checkpoints"))["position"]["step"] == 8
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # it never got to say goodbye
    assert not (killed / "model").exists()

    r = run_atu("unlearn", "--resume", str(killed))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from ckpt-" in r.stderr and "stage 2 of 4" in r.stderr
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "done" and len(run["resumed"]) == 1
    # the same log (every step's losses, every evaluation), the same weights, bit for bit
    assert records(killed) == records(whole)
    stages = [r["stage"] for r in records(whole) if r["event"] == "eval"]
    assert stages == ["before", "unlearn1@4", "unlearn1@8", "unlearn1", "unlearn2@4", "unlearn2@8", "unlearn2"]
    for name in ("model/model.safetensors", "head.safetensors"):
        a, b = load_file(whole / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not (killed / "checkpoints").exists()  # deleted once the run is done (run.keep_checkpoint=false)
    assert (killed / "report.html").exists()


def test_resume_refuses_a_folder_without_checkpoint_a_finished_run_and_a_changed_config(tmp_path):
    done = tmp_path / "done"
    r = run_atu(
        "unlearn",
        *RUN[:-1],
        "method.unlearn_steps=2",
        "method.align_steps=2",
        "method.realign_steps=1",
        "run.checkpoint_every=0",
        "run.keep_checkpoint=true",
        f"run.output_dir={done}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_atu("unlearn", "--resume", str(done))
    assert r.returncode == 2 and "already finished; nothing to resume" in r.stderr

    # a run that stopped: its checkpoint exists, but the command line changes the experiment
    run = json.loads((done / "run.json").read_text())
    (done / "run.json").write_text(json.dumps({**run, "status": "failed"}))
    r = run_atu("unlearn", "--resume", str(done), "method.unlearn_lr=0.5")
    assert (
        r.returncode == 2 and "--resume with a changed config: method.unlearn_lr=0.5 (the run used 0.001)" in r.stderr
    )
    r = run_atu("unlearn", "--resume", str(done), "method=ga")
    assert r.returncode == 2 and "--resume with a changed config" in r.stderr
    # the run folder exists: a new run into it is refused and pointed at --resume
    r = run_atu("unlearn", *RUN, f"run.output_dir={done}")
    assert r.returncode == 2 and f"atu unlearn --resume {done}" in r.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((done / "config.yaml").read_text())
    (empty / "run.json").write_text(json.dumps({**run, "status": "failed"}))
    r = run_atu("unlearn", "--resume", str(empty))
    assert r.returncode == 2 and "has no complete checkpoint" in r.stderr
    r = run_atu("unlearn", "--resume", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "is not a run folder" in r.stderr


def test_checkpoint_round_trips_optimizer_rng_and_nested_state_without_pickle(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    state = {
        "optimizer": opt.state_dict(),
        "rng": checkpoint.rng_state(),
        "gen": gen.get_state(),
        "position": {"stage": 2, "step": 7, "info": {"tau": 0.3}},
        "none": None,
        "pair": (1, "a"),
    }
    path = checkpoint.save(tmp_path / "ck", state)
    expected_next = torch.rand(3)  # what the RNG gives right after the save
    back = checkpoint.load(path)
    assert back["position"] == state["position"] and back["none"] is None and back["pair"] == (1, "a")
    opt2 = torch.optim.Adam(model.parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])  # int keys and tuples (betas) survive
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    checkpoint.set_rng_state(back["rng"])
    assert torch.equal(torch.rand(3), expected_next)
    g2 = torch.Generator()
    g2.set_state(back["gen"])
    assert torch.equal(torch.rand(2, generator=g2), torch.rand(2, generator=gen))
    assert {p.name for p in path.iterdir()} == {"tensors.safetensors", "state.json"}  # no pickle anywhere

    second = checkpoint.save(tmp_path / "ck", {"position": {"stage": 3}})
    assert checkpoint.latest(tmp_path / "ck") == second and not path.exists()  # only the newest is kept
    # a half-written checkpoint (killed before the pointer moved) is never picked
    (tmp_path / "ck" / ".tmp-ckpt-000003").mkdir()
    assert checkpoint.latest(tmp_path / "ck") == second
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        checkpoint.save(tmp_path / "ck2", {"x": object()})
