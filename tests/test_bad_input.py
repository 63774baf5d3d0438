"""Every bad input in docs/errors.md: one line naming the problem and the fix, exit 2, no traceback, nothing written.

The CLI's `main()` runs in-process (the same code path as the `atu` command, without paying the interpreter and
library start-up for each case); the failure tests at the bottom run real subprocesses."""

import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atu.cli import main

DOCS = Path(__file__).parent.parent / "docs" / "errors.md"


def probe_root(tmp_path: Path, name: str, text: str) -> str:
    folder = tmp_path / name / "1_Stephen_King"
    folder.mkdir(parents=True)
    (folder / "forget_level1.json").write_text(text)
    return str(tmp_path / name)


def bad_folder(tmp_path: Path) -> str:
    folder = tmp_path / "badfolder" / "Stephen King probes"
    folder.mkdir(parents=True)
    (folder / "forget_level1.json").write_text("[]")
    return str(tmp_path / "badfolder")


def fixtures(tmp_path: Path) -> dict[str, str]:
    """Real bad files on disk for the cases that need them."""
    import gguf
    import numpy as np

    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "a_file").write_text("not a folder")
    writer = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), arch="rwkv7")  # an architecture transformers cannot load
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    remote = tmp_path / "remote_code_model"
    remote.mkdir()
    (remote / "config.json").write_text(
        json.dumps({"model_type": "custom", "auto_map": {"AutoConfig": "conf.Custom"}})
    )
    (remote / "conf.py").write_text("raise SystemExit('remote code ran')\n")
    existing = tmp_path / "existing_run"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    return {
        "EMPTY": str(tmp_path / "empty.json"),
        "FILE": str(tmp_path / "a_file"),
        "GGUF": str(tmp_path / "rwkv.gguf"),
        "REMOTE": str(remote),
        "EXISTING": str(existing),
        "BADJSON": probe_root(tmp_path, "badjson", "[{oops"),
        "NOPROBES": probe_root(tmp_path, "noprobes", "[]"),
        "NOFIELDS": probe_root(tmp_path, "nofields", json.dumps([{"query": "Where was he born?"}])),
        "NOTLIST": probe_root(tmp_path, "notlist", json.dumps({"query": "Where was he born?"})),
        "BLANKANSWER": probe_root(
            tmp_path, "emptyanswer", json.dumps([{"query": "Born?", "answer": "", "level": "1"}])
        ),
        "BADFOLDER": bad_folder(tmp_path),
    }


# (case id as in docs/errors.md, command line, what the one line must say)
CASES = [
    (
        "unknown-target",
        ["unlearn", "target=Warren Bufett"],
        "unknown target 'Warren Bufett'. Did you mean: Warren Buffett",
    ),
    ("unknown-method", ["unlearn", "method=atu_typo"], "unknown method 'atu_typo'. Did you mean: atu_paper, atu?"),
    (
        "misspelled-method-key",
        ["unlearn", "method.tauss=[0.5]"],
        "bad method setting 'tauss': no such key. Did you mean: taus?",
    ),
    (
        "misspelled-key",
        ["unlearn", "data.max_lenght=64"],
        "bad setting 'data.max_lenght': no such key. Did you mean: max_length?",
    ),
    ("wrong-type", ["unlearn", "method.unlearn_steps=abc"], "bad value for method.unlearn_steps: Value 'abc'"),
    (
        "missing-model-path",
        ["unlearn", "model.name_or_path=/nonexistent/model"],
        "model path /nonexistent/model does not exist",
    ),
    ("hub-id-offline", ["unlearn", "model.name_or_path=someorg/some-model"], "it is not in the local hub cache"),
    ("remote-code", ["unlearn", "model.name_or_path=REMOTE"], "pass model.trust_remote_code=true"),
    (
        "unsupported-gguf",
        ["unlearn", "model.name_or_path=GGUF"],
        "GGUF model with architecture rwkv7 is not supported",
    ),
    ("missing-gguf", ["unlearn", "model.name_or_path=/tmp/none.gguf"], "GGUF file /tmp/none.gguf does not exist"),
    ("malformed-probe-file", ["unlearn", "target=Stephen King", "data.roots=[BADJSON]"], "is not valid JSON"),
    ("empty-probe-file", ["unlearn", "target=Stephen King", "data.roots=[NOPROBES]"], "forget_level1.json is empty"),
    (
        "probe-missing-fields",
        ["unlearn", "target=Stephen King", "data.roots=[NOFIELDS]"],
        "probe is missing answer, level",
    ),
    ("probe-file-not-a-list", ["eval", "target=Stephen King", "data.roots=[NOTLIST]"], "must hold a JSON list"),
    ("probe-empty-answer", ["eval", "target=Stephen King", "data.roots=[BLANKANSWER]"], "the probe's answer is empty"),
    (
        "target-folder-name",
        ["eval", "target=Stephen King", "data.roots=[BADFOLDER]"],
        "its name is not <number>_<Name>",
    ),
    ("empty-forget-corpus", ["unlearn", "data.forget_corpus=EMPTY"], "empty.json is empty; give a JSON list"),
    ("tau-out-of-range", ["unlearn", "method.taus=[1.5]"], "method.taus=[1.5] must be at most 1.0"),
    ("tau-increasing", ["unlearn", "method.taus=[0.3,0.5]"], "must not increase"),
    ("hook-layer-too-deep", ["unlearn", "method.hook_layer=9"], "outside this model's 1..4 layers"),
    (
        "lever-layer-not-below-hook",
        ["unlearn", "method.hook_layer=3", "method.extra_hook_layers=[3]"],
        "method.extra_hook_layers=[3] must lie below the hook layer 3",
    ),
    ("saliency-with-lora", ["unlearn", "method.saliency_rows=0.1", "method.lora=true"], "cannot be used with lora"),
    (
        "lora-targets-missing",
        ["unlearn", "method.lora=true", "method.lora_targets=[qkv_proj]"],
        "names no linear layer of this model; pick some of",
    ),
    ("encoder-missing", ["unlearn", "encoder.name_or_path=/nonexistent/enc"], "does not exist"),
    ("encoder-hub-offline", ["unlearn", "encoder.name_or_path=someorg/some-encoder"], "cannot load sentence encoder"),
    ("run-folder-exists", ["unlearn", "run.output_dir=EXISTING"], "already exists; pick another run.output_dir"),
    ("negative-steps", ["unlearn", "method.unlearn_steps=-1"], "method.unlearn_steps=-1 must be at least 0"),
    ("negative-steps-token", ["unlearn", "method=ga", "method.steps=-3"], "method.steps=-3 must be at least 0"),
    ("batch-size-zero", ["unlearn", "method.unlearn_batch_size=0"], "method.unlearn_batch_size=0 must be at least 1"),
    ("eval-batch-size-zero", ["unlearn", "eval.batch_size=0"], "eval.batch_size=0 must be at least 1"),
    ("negative-lr-atu", ["unlearn", "method.unlearn_lr=-1e-5"], "method.unlearn_lr=-1e-05 must be greater than 0"),
    ("negative-lr-rmu", ["unlearn", "method=rmu", "method.lr=-1"], "method.lr=-1.0 must be greater than 0"),
    ("negative-lr-grun", ["unlearn", "method=grun", "method.lr=0"], "method.lr=0.0 must be greater than 0"),
    ("max-passages-zero", ["unlearn", "data.max_passages=0"], "data.max_passages=0 must be at least 1"),
    ("empty-taus", ["unlearn", "method.taus=[]"], "method.taus is empty"),
    ("max-length-beyond-context", ["unlearn", "data.max_length=100000"], "exceeds the model's context of 1024 tokens"),
    ("max-length-too-small", ["unlearn", "data.max_length=1"], "data.max_length=1 must be at least 16"),
    ("unwritable-output", ["unlearn", "run.output_dir=FILE/run"], "cannot write run folder"),
    (
        "unknown-logger",
        ["unlearn", "run.loggers=[tensorbord]"],
        "run.loggers=['tensorbord'] is not one of tensorboard",
    ),
    ("bad-dtype", ["unlearn", "model.dtype=float8"], "model.dtype=float8 is not one of"),
    ("cuda-without-gpu", ["unlearn", "run.device=cuda"], "no CUDA GPU is visible"),
    ("unknown-command", ["frobnicate"], "unknown command 'frobnicate'"),
    ("unknown-option", ["unlearn", "--bogus"], "unknown option --bogus"),
    (
        "no-probes-for-eval",
        ["eval", "target=Ada Lovelace", "data.allow_new_target=true"],
        "no probes exist for Ada Lovelace",
    ),
    ("report-not-a-run", ["report", "FILE"], "is neither a run folder"),
    ("attack-not-a-run", ["attack", "FILE"], "is not a run folder"),
]


@pytest.mark.parametrize("case, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, case, args, message):
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    paths = fixtures(tmp_path)
    args = [re.sub("|".join(paths), lambda m: paths[m.group(0)], a) for a in args]
    out = tmp_path / "run"
    if args[0] in ("unlearn", "eval"):  # the tiny random model unless the case names another; never the cwd's runs/
        args.insert(1, "model=tiny")
    if args[0] == "unlearn" and not any(a.startswith("run.output_dir=") for a in args):
        args.append(f"run.output_dir={out}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("atu: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def _out_of_range(meta: dict, value):
    """A value just outside a field's bounds (None when the field has none)."""
    if meta.get("choices"):
        return "no_such_choice"
    if meta.get("at_least") is not None:
        return meta["at_least"] - 1
    if meta.get("above") is not None:
        return meta["above"]
    if meta.get("at_most") is not None:
        return meta["at_most"] + 1
    return None


def _bounded_settings():
    from dataclasses import fields

    from atu.config import SECTIONS
    from atu.methods import get_method

    for section, method, schema in [(s, None, c) for s, c in SECTIONS.items()] + [
        ("method", m, get_method(m).Config) for m in ("atu", "ga", "rmu", "grun", "icu")
    ]:
        for f in fields(schema):
            bad = _out_of_range(f.metadata, None) if f.metadata else None
            if bad is not None:
                yield section, method, f.name, [bad] if f.metadata.get("each") else bad


BOUNDED = list(_bounded_settings())


@pytest.mark.parametrize("section, method, name, bad", BOUNDED, ids=[f"{m or s}.{n}" for s, m, n, _ in BOUNDED])
def test_every_bounded_setting_is_checked_at_load_time(section, method, name, bad, tmp_path, capsys):
    """setting-out-of-range: every field with a range or choices (config and every method family) refuses a value
    just outside it, in one line that names the key, before anything is written."""
    value = "[" + ",".join(map(str, bad)) + "]" if isinstance(bad, list) else bad
    args = ["unlearn", "model=tiny", f"run.output_dir={tmp_path / 'run'}", f"{section}.{name}={value}"]
    code = main(args[:1] + ([f"method={method}"] if method else []) + args[1:])
    err = capsys.readouterr().err
    assert code == 2 and f"atu: error: {section}.{name}=" in err, err
    assert not (tmp_path / "run").exists()


def test_docs_table_lists_every_tested_case_and_nothing_else():
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", DOCS.read_text(), flags=re.M)
    tested = [c[0] for c in CASES] + [
        "resume-no-checkpoint",
        "resume-changed-config",
        "resume-finished-run",
        "nan-loss",
        "disk-full",
        "setting-out-of-range",
    ]
    assert sorted(documented) == sorted(tested) and len(documented) >= 20


# ------------------------------------------------------------------ failures during a run (real subprocesses)

TINY = [
    "model=tiny",
    "target=Stephen King",
    "method.align_steps=4",
    "method.realign_steps=2",
    "method.unlearn_steps=4",
    "method.taus=[0.3,0.1]",
    "data.max_passages=3",
    "data.other_targets=1",
    "eval.max_probes_per_file=1",
    "method.unlearn_params=below_hook",
    "method.hook_layer=2",
    "method.head_width=64",
    "method.head_layers=1",
    "method.head_heads=2",
]


def atu(*args, **kw):
    return subprocess.run([sys.executable, "-m", "atu.cli", *args], capture_output=True, text=True, timeout=600, **kw)


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    from atu import checkpoint

    out = tmp_path / "run"
    r = atu("unlearn", *TINY, "method.unlearn_lr=1e30", "run.checkpoint_every=0", f"run.output_dir={out}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    failed = re.search(
        r"atu: error: stage unlearn(\d) step \d+: the loss became nan.*last good checkpoint is kept", r.stderr
    )
    assert failed, r.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "loss became nan" in run["error"]
    latest = checkpoint.latest(out / "checkpoints")
    # the checkpoint written after the stage before the one that failed (align, unlearn1, realign1, unlearn2)
    stage_index = {"1": 1, "2": 3}[failed.group(1)]
    assert latest is not None and checkpoint.load(latest)["position"] == {"stage": stage_index, "step": 0, "info": {}}
    assert not (out / "model").exists()


def _limit_file_size():
    # a 1.3 MB "disk": the checkpoints (block 0, a 32-wide head and their Adam states: ~1 MB) fit, the 1.65 MB
    # model cannot
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_300_000, 1_300_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process


def test_disk_full_while_saving_is_one_line_and_leaves_no_half_written_model(tmp_path):
    out = tmp_path / "run"
    small = ["method.hook_layer=1", "method.head_width=32"]  # a checkpoint well below the model's size
    r = atu("unlearn", *TINY, *small, f"run.output_dir={out}", preexec_fn=_limit_file_size)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("atu: error:")]
    assert len(errors) == 1 and f"cannot write to the run folder {out}: File too large" in errors[0]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "model").exists() and not list(out.glob("model*.tmp"))
    assert (out / "checkpoints" / "latest.json").exists()  # the run can be resumed once there is room
