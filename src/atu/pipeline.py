"""config -> model + data -> method -> engine (stages) -> evaluation -> run folder and report.

Everything that can be checked is checked before the run folder is created, so a bad input leaves nothing behind.
"""
from __future__ import annotations

import atexit
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from . import data as datalib
from .distributed import barrier, full, fsdp_requested, gathered, is_main, is_sharded, place_like, shard_blocks
from .errors import AtuError
from .evaluate import evaluate_target
from .files import write_json
from .models import load_encoder, load_lm, pick_device, save_model


def say(msg: str) -> None:
    if is_main():  # several processes: one voice
        print(f"[atu] {msg}", file=sys.stderr, flush=True)


@dataclass
class RunContext:
    model: object
    tokenizer: object
    encoder: object
    device: torch.device
    target: datalib.Target
    target_name: str
    forget_texts: list[str]
    retain_texts: list[str]  # other targets' forget corpora (ATU's alignment data)
    other_targets: list[str]
    general_texts: list[str] = field(default_factory=datalib.general_retain)  # unrelated text for retain losses
    seed: int = 0
    max_length: int = 128
    encoder_batch_size: int = 256
    infer_batch_size: int = 16
    notes: list[str] = field(default_factory=list)


def _progress_factory():
    from tqdm.auto import tqdm

    return lambda total: tqdm(total=total, desc="      eval", leave=False, disable=not sys.stderr.isatty() or not is_main())


def evaluate_model(model, tokenizer, target: datalib.Target, cfg, system: str | None = None):
    probes = {k: v for k, v in target.probes.items() if cfg.eval.neighbours or not k.startswith("neighbor")}
    return evaluate_target(model, tokenizer, probes, cfg.eval.batch_size, cfg.eval.max_new_tokens, system,
                           _progress_factory())


def check_common(cfg) -> None:
    if cfg.data.max_length <= 1:
        raise AtuError(f"data.max_length={cfg.data.max_length} is too small; use at least 16 tokens")
    if cfg.eval.batch_size <= 0:
        raise AtuError(f"eval.batch_size={cfg.eval.batch_size} must be at least 1")
    if cfg.data.other_targets < 0:
        raise AtuError(f"data.other_targets={cfg.data.other_targets} must be 0 or more")
    if cfg.run.mixed_precision not in ("no", "bf16"):
        raise AtuError(f"run.mixed_precision={cfg.run.mixed_precision} is not 'no' or 'bf16'")
    if cfg.run.checkpoint_every < 0:
        raise AtuError(f"run.checkpoint_every={cfg.run.checkpoint_every} must be 0 (stage ends only) or more")
    from .loggers import check_loggers

    check_loggers(cfg.run.loggers)


def run_dir_for(cfg, target: datalib.Target) -> Path:
    if cfg.run.output_dir:
        return Path(cfg.run.output_dir).expanduser()
    return Path("runs") / f"{target.slug}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise AtuError(f"run folder {path} already exists; pick another run.output_dir or pass run.overwrite=true")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise AtuError(f"cannot write run folder {path}: {e.strerror}; choose a writable run.output_dir") from None


def read_evals(run_dir: Path) -> list[dict]:
    """The evaluation rows of a run folder's metrics.jsonl, in order ('before' first, then each stage), without the
    "event" key."""
    rows = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    return [{k: v for k, v in r.items() if k != "event"} for r in rows if r.get("event") == "eval"]


def run_status(run_dir: Path) -> str | None:
    """run.json's status ("running", "done", "failed", "interrupted"), or None when there is no readable run.json."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def resumable(run_dir: Path, cfg) -> bool:
    """An interrupted run of exactly this configuration, with a checkpoint to continue from."""
    from .checkpoint import latest

    if latest(run_dir / "checkpoints") is None or not (run_dir / "config.yaml").exists():
        return False
    return not config_changes(OmegaConf.load(run_dir / "config.yaml"), cfg)


def max_context(model) -> int | None:
    cfg = model.config.get_text_config()
    return getattr(cfg, "max_position_embeddings", None)


def choose_other_targets(target: str, n: int, roots, seed: int) -> list[datalib.Target]:
    """Targets with a forget corpus, other than `target`, chosen by seed from the sorted list (not file order)."""
    if n == 0:
        return []
    names = sorted(name for name in datalib.target_folders(roots) if name != target)
    loaded = [t for t in (datalib.load_target(name, roots) for name in names) if t.forget_corpus]
    random.Random(seed).shuffle(loaded)
    return loaded[:n]


@torch.no_grad()
def generate_corpus(model, tokenizer, name: str, n: int, max_new_tokens: int, seed: int) -> list[str]:
    """RWKU's zero-shot setting: the model's own descriptions of the target, given only its name."""
    prompts = [f"Please write a short biography of {name}.\n{name}", f"{name} is", f"Here is what is known about {name}:",
               f"The life and work of {name}.\n"]
    torch.manual_seed(seed)
    texts = []
    tokenizer.padding_side = "left"
    for start in range(0, n, 8):
        batch = [prompts[(start + i) % len(prompts)] for i in range(min(8, n - start))]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(next(model.parameters()).device)
        out = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, synced_gpus=is_sharded(model))
        for row, prompt in enumerate(batch):
            cont = tokenizer.decode(out[row, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            lead = prompt.split("\n")[-1]
            texts.append((lead + cont).strip())
    return [t for t in texts if len(t.split()) >= 10]


def unlearn(cfg, reuse_before: Path | None = None, resume: bool = False) -> Path:
    """The whole `atu unlearn` job. Returns the run folder.

    reuse_before: a finished run folder of the same model, target and evaluation settings whose "before" evaluation
    is copied instead of recomputed (`atu compare` runs many methods from the same starting model).
    resume: continue the run in cfg.run.output_dir from its last checkpoint (see `resume_config`)."""
    from . import checkpoint as ckpt
    from .methods import get_method

    check_common(cfg)
    torch.manual_seed(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    roots = list(cfg.data.roots)
    target = datalib.load_target(cfg.target, roots, cfg.data.allow_new_target, cfg.eval.max_probes_per_file)
    method_cls = get_method(cfg.method.name)
    device = _device(cfg, method_cls)
    out = run_dir_for(cfg, target)
    saved = ckpt.latest(out / "checkpoints") if resume else None
    if resume and saved is None:
        raise AtuError(f"{out} has no complete checkpoint to resume from (the run stopped before its first one); "
                       "start it again with run.overwrite=true")
    if not resume and out.exists() and any(out.iterdir()) and not cfg.run.overwrite:
        hint = f", or continue it with atu unlearn --resume {out}" if ckpt.latest(out / "checkpoints") else ""
        raise AtuError(f"run folder {out} already exists; pick another run.output_dir or pass run.overwrite=true{hint}")
    barrier()  # every process has checked the folder before the main one creates it
    if resume and (out / "forget_corpus.json").exists():  # the corpus the run generated for itself
        cfg.data.forget_corpus = str(out / "forget_corpus.json")
    if cfg.data.forget_corpus:
        target.forget_corpus = datalib.load_texts(Path(cfg.data.forget_corpus).expanduser())
        target.forget_corpus_source = cfg.data.forget_corpus
        if not target.forget_corpus:
            raise AtuError(f"forget corpus {cfg.data.forget_corpus} is empty; give a JSON list of {{\"text\": ...}} passages")
    elif target.forget_corpus_source and not target.forget_corpus:
        raise AtuError(f"forget corpus {target.forget_corpus_source} is empty; add passages or pass data.forget_corpus=FILE")
    # other targets' corpora: ATU's alignment data, GRUN's gate negatives; the other methods do not read them
    uses_others = getattr(method_cls, "uses_other_targets", False)
    others = choose_other_targets(target.name, cfg.data.other_targets, roots, cfg.run.seed) if uses_others else []

    say(f"loading model {cfg.model.name_or_path}" + (f" and encoder {cfg.encoder.name_or_path}" if method_cls.needs_encoder else "")
        + f" on {device}")
    fsdp = fsdp_requested()
    if fsdp and cfg.method.get("lora"):
        raise AtuError("method.lora=true with FSDP is not supported; train LoRA data-parallel (accelerate launch "
                       "--multi_gpu) or drop method.lora under FSDP")
    model, tok = load_lm(cfg.model, "cpu" if fsdp else device)  # FSDP: each process moves only its shards
    ctx_len = max_context(model)
    if ctx_len and cfg.data.max_length > ctx_len:
        raise AtuError(f"data.max_length={cfg.data.max_length} exceeds the model's context of {ctx_len} tokens; lower it")
    if cfg.run.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fsdp:
        shard_blocks(model, device)
        model.to(device)  # the replicated rest: embeddings, final norm, LM head
    encoder = load_encoder(cfg.encoder, device) if method_cls.needs_encoder else None
    notes = []
    method_cls.check_model(cfg.method, model)
    if cfg.method.get("lora"):
        from .methods.common import lora_modules
        lora_modules(cfg.method, model)

    from safetensors import SafetensorError

    try:
        return _run(cfg, out, target, model, tok, encoder, device, method_cls, others, notes, reuse_before, saved)
    except (OSError, SafetensorError) as e:  # disk full, permissions, a vanished folder: one line, not a traceback
        if isinstance(e, OSError):
            reason = (e.strerror or str(e)) + (f" ({e.filename})" if e.filename else "")
        elif "I/O error: " in str(e):  # safetensors reports the OS error inside its own exception
            reason = str(e).split("I/O error: ", 1)[1].strip()
        else:
            raise
        raise AtuError(f"cannot write to the run folder {out}: {reason}; free disk space or choose a writable "
                       "run.output_dir (a checkpoint, if one was written, is kept for --resume)") from None


def _run(cfg, out, target, model, tok, encoder, device, method_cls, others, notes, reuse_before, saved) -> Path:
    from . import checkpoint as ckpt
    from .engine import Resume, run_stages
    from .loggers import MetricsLog
    from .report import print_table, versions, write_report

    state = ckpt.load(saved) if saved else None
    main = is_main()
    if not main:  # the other processes compute the same run; their files go to a scratch folder, removed at exit
        scratch = Path(tempfile.mkdtemp(prefix="atu-process-"))
        atexit.register(shutil.rmtree, scratch, True)
        for name in ("run.json", "metrics.jsonl", "forget_corpus.json"):
            if state is not None and (out / name).exists():
                shutil.copy(out / name, scratch / name)
        out = scratch
    if state is None:
        prepare_run_dir(out, cfg.run.overwrite)
        OmegaConf.save(cfg, out / "config.yaml")
    if not target.forget_corpus:
        say(f"no forget corpus is shipped for {target.name}: generating {cfg.data.generated_passages} passages from "
            "the model's own descriptions (RWKU zero-shot setting)")
        target.forget_corpus = generate_corpus(model, tok, target.name, cfg.data.generated_passages,
                                               cfg.data.generated_max_new_tokens, cfg.run.seed)
        target.forget_corpus_source = str(out / "forget_corpus.json")
        write_json(out / "forget_corpus.json", [{"text": t, "subject": target.name} for t in target.forget_corpus])
        if not target.forget_corpus:
            raise AtuError(f"the model produced no usable description of {target.name}; pass data.forget_corpus=FILE")
    if target.forget_corpus_source == str(out / "forget_corpus.json"):
        notes.append(f"Forget corpus generated by the model itself ({len(target.forget_corpus)} passages), saved in forget_corpus.json.")
    forget_texts = target.forget_corpus[: cfg.data.max_passages] if cfg.data.max_passages else target.forget_corpus
    if not target.probes:
        notes.append(f"No probes exist for {target.name}: nothing to evaluate; add RWKU-format probe files under data.roots.")
        say(notes[-1])

    ctx = RunContext(model=model, tokenizer=tok, encoder=encoder, device=device, target=target, target_name=target.name,
                     forget_texts=forget_texts,
                     # each other target contributes at most as many passages as the target: balanced alignment data
                     retain_texts=[t for o in others for t in o.forget_corpus[: len(forget_texts)]],
                     other_targets=[o.name for o in others], seed=cfg.run.seed, max_length=cfg.data.max_length,
                     encoder_batch_size=cfg.encoder.batch_size, infer_batch_size=cfg.eval.batch_size, notes=notes)
    method = method_cls(cfg.method, ctx)
    uses_others = getattr(method_cls, "uses_other_targets", False)
    if state is None:
        run_info = {"status": "running", "target": target.name, "method": cfg.method.name, "device": str(device),
                    "forget_corpus": target.forget_corpus_source, "forget_passages": len(forget_texts),
                    "other_targets": ctx.other_targets, "versions": versions(), "started": time.strftime("%F %T")}
    else:
        run_info = json.loads((out / "run.json").read_text())
        run_info.update(status="running", resumed=run_info.get("resumed", []) + [time.strftime("%F %T")])
    log = MetricsLog(out, cfg.run.loggers if main else [], cfg, run_info, state["metrics_bytes"] if state else None,
                     state["global_step"] if state else 0)
    write_json(out / "run.json", run_info)  # after the logger: with the wandb run id, when wandb logs
    (out / "predictions").mkdir(exist_ok=True)
    history: list[dict] = read_evals(out) if state else []

    def evaluate_stage(stage_name: str, info: dict) -> None:
        if not target.probes:
            return
        if stage_name == "before" and reuse_before is not None:
            row = next(r for r in read_evals(reuse_before) if r["stage"] == "before") | {"reused_from": str(reuse_before)}
            history.append(row)
            log({"event": "eval", **row})
            shutil.copy(reuse_before / "predictions" / "before.json", out / "predictions" / "before.json")
            say(_one_line(row) + f" (reused from {reuse_before})")
            return
        t0 = time.time()
        system = method.system_prompt if stage_name != "before" else None
        metrics, records = evaluate_model(model, tok, target, cfg, system)
        row = {"stage": stage_name, **{k: info[k] for k in ("tau", "tau_setting") if k in info}, **metrics,
               "eval_seconds": round(time.time() - t0, 1)}
        history.append(row)
        log({"event": "eval", **row})
        write_json(out / "predictions" / f"{stage_name}.json", records)
        say(_one_line(row))

    started = time.time() - (run_info.get("seconds_before_resume", 0) if state else 0)
    also = f"also reads {', '.join(ctx.other_targets) or 'no other target'}; " if uses_others else ""
    say(f"target {target.name}: {len(forget_texts)} forget passages ({target.forget_corpus_source}); {also}run folder {out}")
    utility_scores = dict(state["utility"]) if state else {}
    if state is None:
        evaluate_stage("before", {})
        if cfg.eval.utility:
            utility_scores["before"] = _utility(model, tok, cfg)
    method.prepare(say)
    stages = method.stages()
    modules = method.modules()
    resume = None
    if state is not None:
        position = state["position"]
        say(f"resuming from {saved.name}: stage {position['stage'] + 1} of {len(stages)}, step {position['step']}")
        with torch.no_grad():
            for i, module in enumerate(modules):
                params = dict(module.named_parameters())
                for name, value in state["params"].get(str(i), {}).items():
                    params[name].copy_(place_like(value, params[name]))
        method.load_state_dict(state["method"])
        resume = Resume(position["stage"], position["step"], position["info"], state["optimizer"], state["rng"])
    run_info.update(trainable_parameters=method.trainable_parameters(), training_data=method.training_data)
    write_json(out / "run.json", run_info)

    sharded = is_sharded(model)

    def save_checkpoint(position: dict, optimizer, trained: set) -> None:
        if not main and not sharded:
            return
        # under FSDP every process takes part in gathering the shards, then the main one writes
        params = {str(i): {n: full(p) for n, p in m.named_parameters() if id(p) in trained} for i, m in enumerate(modules)}
        optimizer_state = gathered(optimizer.state_dict()) if optimizer is not None else None
        if not main:
            return
        ckpt.save(out / "checkpoints", {
            "position": position, "global_step": log.global_step, "metrics_bytes": log.size, "utility": utility_scores,
            "params": params, "optimizer": optimizer_state, "method": method.state_dict(), "rng": ckpt.rng_state()})

    try:
        run_stages(stages, modules, lambda st, info: evaluate_stage(st.name, info) if st.evaluate else None, log,
                   checkpoint=save_checkpoint, every=cfg.run.checkpoint_every, resume=resume,
                   autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                                   enabled=cfg.run.mixed_precision == "bf16"))
        if cfg.eval.utility:
            utility_scores["after"] = _utility(model, tok, cfg)
            run_info["utility"] = utility_scores
        method.save(out)
        to_save = method.model_to_save()
        if cfg.run.save_model and to_save is not None:
            weights = {k: full(v) for k, v in to_save.state_dict().items()} if sharded else None  # every process gathers
            if main:
                say("saving the unlearned model (safetensors)")
                save_model(to_save, tok, out / "model", weights)
    except BaseException as e:  # the run folder says how it ended; the last checkpoint stays for --resume
        failed = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run_info.update(status=failed, error=str(e).splitlines()[0] if str(e) else type(e).__name__,
                        seconds_before_resume=round(time.time() - started, 1))
        try:
            write_json(out / "run.json", run_info)
        except OSError:
            pass
        raise
    finally:
        log.close()
    run_info.update(status="done", seconds=round(time.time() - started, 1), notes=notes)
    run_info.pop("error", None)
    write_json(out / "run.json", run_info)
    if not cfg.run.keep_checkpoint:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if not main:
        return out
    write_report(out)
    print_table(history)
    say(f"done in {run_info['seconds']:.0f} s; report: {out / 'report.html'} (and report.md)")
    return out


def _device(cfg, method_cls) -> torch.device:
    """The device of this process: accelerate's (one GPU per process) when launched with several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(cfg.run.device)
    from .distributed import state, world_size

    device = state(cpu=cfg.run.device == "cpu").device
    if world_size() > 1 and not getattr(method_cls, "data_parallel", False):
        raise AtuError(f"method {cfg.method.name} runs in one process; launch it without accelerate/torchrun "
                       "(ATU runs data-parallel over several)")
    return device


def resume_config(run_dir: Path, overrides: list[str]):
    """The configuration of the run in `run_dir`, for --resume. Overrides may repeat the run's own settings or change
    run.threads / run.device; anything else would make the resumed run a different experiment, so it is refused."""
    from omegaconf.errors import OmegaConfBaseException

    if not (run_dir / "config.yaml").exists() or not (run_dir / "run.json").exists():
        raise AtuError(f"{run_dir} is not a run folder (no config.yaml/run.json); pass the folder atu unlearn wrote")
    if run_status(run_dir) == "done":
        raise AtuError(f"the run in {run_dir} already finished; nothing to resume (its report is {run_dir / 'report.html'})")
    saved = OmegaConf.load(run_dir / "config.yaml")
    try:  # settings added to atu after the run started take their defaults
        from .config import load_config
        saved = OmegaConf.merge(load_config([f"method={saved.method.name}"]), saved)
    except (AtuError, OmegaConfBaseException):
        pass
    try:
        changed = OmegaConf.merge(saved, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    except OmegaConfBaseException:
        raise AtuError(f"--resume with a changed config: {' '.join(overrides)}; resume with the run's own settings "
                       "(drop the override) or start a new run") from None
    diffs = config_changes(saved, changed)
    if diffs:
        key, old, new = diffs[0]
        raise AtuError(f"--resume with a changed config: {key}={new} (the run used {old}); resume with the run's own "
                       "settings (drop the override) or start a new run")
    changed.run.output_dir = str(run_dir)
    return changed


def config_changes(saved, cfg) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every setting that differs, except those a resumed run may change."""
    free = ("run.threads", "run.device", "run.output_dir", "run.overwrite")
    old, new = _flat(saved), _flat(cfg)
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if not k.startswith(free) and old.get(k) != new.get(k)]


def _flat(node, prefix: str = "") -> dict:
    container = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
    out = {}
    for key, value in container.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _utility(model, tok, cfg) -> dict:
    from .evaluate.utility import utility

    return utility(model, tok, cfg.eval.batch_size, cfg.eval.utility_limit, say)


def _one_line(row: dict) -> str:
    keys = [k for k in ("forget_fb", "forget_qa", "forget_aa", "forget_all", "neighbor_all") if k in row]
    tau = f" (tau={row['tau']:.3f})" if "tau" in row else ""
    return f"eval {row['stage']}{tau}: " + ", ".join(f"{k}={row[k]:.1f}" for k in keys) + f" [{row['eval_seconds']} s]"


def load_run_model(run_dir: Path, cfg, device, quantize: str | None = None):
    """The model a finished run produced: its saved model/, or the base model plus the run's GRUN intervention; and
    the instruction an ICU run puts before every probe. Returns (model, tokenizer, system_prompt)."""
    model_cfg = OmegaConf.merge(cfg.model, {"name_or_path": str(run_dir / "model")}) if (run_dir / "model").is_dir() else cfg.model
    model, tok = load_lm(model_cfg, device, quantize)
    if (run_dir / "grun.json").exists():
        from .methods.grun import load_intervention
        load_intervention(model, run_dir)
    icu = run_dir / "icu_instruction.txt"
    return model, tok, icu.read_text().strip() if icu.exists() else None


def evaluate_only(cfg, out_file: str | None = None, run_dir: Path | None = None) -> dict:
    """`atu eval`: score any model on any target's probes; a run folder's intervention/instruction is applied."""
    check_common(cfg)
    roots = list(cfg.data.roots)
    target = datalib.load_target(cfg.target, roots, cfg.data.allow_new_target, cfg.eval.max_probes_per_file)
    if not target.probes:
        raise AtuError(f"no probes exist for {target.name}; add RWKU-format probe files (forget_level1.json ...) "
                       "in a folder and pass data.roots=[FOLDER]")
    device = pick_device(cfg.run.device)
    say(f"loading model {cfg.model.name_or_path} on {device}")
    model, tok, system = load_run_model(run_dir, cfg, device) if run_dir is not None else (*load_lm(cfg.model, device), None)
    metrics, records = evaluate_model(model, tok, target, cfg, system)
    result = {"target": target.name, "model": cfg.model.name_or_path, "metrics": metrics, "predictions": records}
    if cfg.eval.utility:
        result["utility"] = _utility(model, tok, cfg)
    if out_file:
        write_json(Path(out_file), result)
    return result
