"""The `atu unlearn` and `atu eval` jobs: config -> model + data -> method -> engine (stages) -> evaluation -> run
folder and report.

Everything that can be checked is checked before the run folder is created, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError

from . import checkpoint as ckpt
from . import config as configlib
from . import data as datalib
from . import report, runs
from .console import eval_line, print_table, progress, say
from .distributed import (
    barrier,
    fsdp_requested,
    full,
    gathered,
    is_main,
    is_sharded,
    place_like,
    shard_blocks,
    state as process_state,
    world_size,
)
from .engine import Resume, run_stages
from .errors import AtuError
from .evaluate import evaluate, generate_corpus, reword_passages
from .evaluate.generation import sentences
from .evaluate.utility import utility
from .loggers import MetricsLog, check_loggers
from .methods import RunContext, get_method, rebuild
from .methods.common import lora_modules
from .models import decoder_layers, fast_bf16, load_encoder, load_lm, max_context, pick_device
from .quantization import update_size_rows
from .runs import Run

RESUMABLE_CHANGES = ("run.threads", "run.device", "run.output_dir", "run.overwrite")  # a resumed run may change these
KILL_AT = "ATU_TEST_KILL_AT"  # tests only: "<stage>:<step>" SIGKILLs the process right after that checkpoint


# ---------------------------------------------------------------- atu unlearn


def unlearn(cfg, reuse_before: Run | None = None, resume: bool = False) -> Path:
    """The whole `atu unlearn` job. Returns the run folder.

    reuse_before: a finished run of the same model, target and evaluation settings whose "before" evaluation is
    copied instead of recomputed (`atu compare` runs many methods from the same starting model).
    resume: continue the run in cfg.run.output_dir from its last checkpoint (see `resume_config`)."""
    check_loggers(cfg.run.loggers)
    torch.manual_seed(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    target = load_target(cfg, Run(cfg.run.output_dir) if resume else None)
    method_cls = get_method(cfg.method.name)
    device = job_device(cfg.run.device, method_cls, cfg.method.name)
    run = Run(cfg.run.output_dir or default_run_dir(target, cfg.method.name))
    saved = checkpoint_to_resume(run, resume, cfg.run.overwrite)
    barrier()  # every process has checked the folder before the main one creates it
    # other targets' corpora: ATU's alignment data, GRUN's gate negatives; the other methods do not read them
    roots = list(cfg.data.roots)
    others = (
        datalib.other_targets(target.name, cfg.data.other_targets, roots, cfg.run.seed)
        if method_cls.uses_other_targets
        else []
    )
    model, tok, encoder = load_models(cfg, device, method_cls)
    with disk_errors(run):
        return Job(cfg, run, target, model, tok, encoder, device, method_cls, others, reuse_before, saved).run()


def load_target(cfg, resumed: Run | None) -> datalib.Target:
    """The target with its probes and forget corpus: the shipped one, data.forget_corpus, or the one a resumed run
    generated for itself."""
    target = datalib.load_target(
        cfg.target, list(cfg.data.roots), cfg.data.allow_new_target, cfg.eval.max_probes_per_file
    )
    corpus = resumed.generated_corpus() if resumed is not None else None
    if corpus is not None or cfg.data.forget_corpus:
        source = corpus or Path(cfg.data.forget_corpus).expanduser()
        target.forget_corpus, target.forget_corpus_source = datalib.load_texts(source), str(source)
        if not target.forget_corpus:
            raise AtuError(f'forget corpus {source} is empty; give a JSON list of {{"text": ...}} passages')
    elif target.forget_corpus_source and not target.forget_corpus:
        raise AtuError(
            f"forget corpus {target.forget_corpus_source} is empty; add passages or pass data.forget_corpus=FILE"
        )
    return target


def default_run_dir(target: datalib.Target, method: str) -> Path:
    return Path("runs") / f"{target.slug}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def checkpoint_to_resume(run: Run, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint a resumed run continues from; for a new run, check that its folder is free."""
    latest = ckpt.latest(run.checkpoints)
    if resume and latest is None:
        raise AtuError(
            f"{run} has no complete checkpoint to resume from (the run stopped before its first one); "
            "start it again with run.overwrite=true"
        )
    if not resume and run.path.exists() and any(run.path.iterdir()) and not overwrite:
        hint = f", or continue it with atu unlearn --resume {run}" if latest else ""
        raise AtuError(
            f"run folder {run} already exists; pick another run.output_dir or pass run.overwrite=true{hint}"
        )
    return latest if resume else None


def job_device(name: str, method_cls, method: str) -> torch.device:
    """The device of this process: accelerate's (one GPU per process) when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(name)
    device = process_state(cpu=name == "cpu").device
    if world_size() > 1 and not method_cls.data_parallel:
        raise AtuError(
            f"method {method} runs in one process; launch it without accelerate/torchrun "
            "(ATU runs data-parallel over several)"
        )
    return device


def load_models(cfg, device: torch.device, method_cls):
    """The LM (sharded under FSDP), its tokenizer and, for methods that need one, the sentence encoder; the method's
    settings that depend on the model are checked here, before the run folder exists."""
    say(
        f"loading model {cfg.model.name_or_path}"
        + (f" and encoder {cfg.encoder.name_or_path}" if method_cls.needs_encoder else "")
        + f" on {device}"
    )
    fsdp = fsdp_requested()
    if fsdp and cfg.method.get("lora"):
        raise AtuError(
            "method.lora=true with FSDP is not supported; train LoRA data-parallel (accelerate launch "
            "--multi_gpu) or drop method.lora under FSDP"
        )
    model, tok = load_lm(cfg.model, "cpu" if fsdp else device)  # FSDP: each process moves only its shards
    context = max_context(model)
    if context and cfg.data.max_length > context:
        raise AtuError(
            f"data.max_length={cfg.data.max_length} exceeds the model's context of {context} tokens; lower it"
        )
    if cfg.run.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fsdp:
        shard_blocks(decoder_layers(model), device)
        model.to(device)  # the replicated rest: embeddings, final norm, LM head
    encoder = load_encoder(cfg.encoder, device) if method_cls.needs_encoder else None
    method_cls.check_model(cfg.method, model)
    if cfg.method.get("lora"):
        lora_modules(cfg.method, model)
    return model, tok, encoder


@contextmanager
def disk_errors(run: Run):
    """Disk full, permissions, a vanished folder: one line, not a traceback."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        if isinstance(e, OSError):
            reason = (e.strerror or str(e)) + (f" ({e.filename})" if e.filename else "")
        elif "I/O error: " in str(e):  # safetensors reports the OS error inside its own exception
            reason = str(e).split("I/O error: ", 1)[1].strip()
        else:
            raise
        raise AtuError(
            f"cannot write to the run folder {run}: {reason}; free disk space or choose a writable "
            "run.output_dir (a checkpoint, if one was written, is kept for --resume)"
        ) from None


class Job:
    """One run of `atu unlearn`, once its inputs are checked and its models loaded: `run()` reads top to bottom."""

    def __init__(self, cfg, run: Run, target, model, tok, encoder, device, method_cls, others, reuse_before, saved):
        self.cfg, self.run_folder, self.target = cfg, run, target
        self.model, self.tok, self.encoder, self.device = model, tok, encoder, device
        self.method_cls, self.others, self.reuse_before = method_cls, others, reuse_before
        self.last_evaluated = None  # the last stage that evaluates, once the method's stages exist
        self.state = ckpt.load(saved) if saved else None
        self.saved = saved
        self.main = is_main()
        self.notes: list[str] = []
        self.history: list[dict] = []
        self.utility: dict = dict(self.state["utility"]) if self.state else {}

    def run(self) -> Path:
        cfg, state = self.cfg, self.state
        self.open_folder()
        self.ensure_forget_corpus()
        self.reworded = self.reworded_corpus() if cfg.data.reword_forget else []
        ctx = self.context()
        self.method = method = self.method_cls(cfg.method, ctx)
        self.info = self.start_info(ctx)
        self.log = MetricsLog(
            self.run_folder,
            cfg.run.loggers if self.main else [],
            cfg,
            self.info,
            state["metrics_bytes"] if state else None,
            state["global_step"] if state else 0,
        )
        self.run_folder.write_info(self.info)  # after the logger: with the wandb run id, when wandb logs
        self.history = self.run_folder.evals() if state else []
        others = (
            f"also reads {', '.join(ctx.other_targets) or 'no other target'}; "
            if self.method_cls.uses_other_targets
            else ""
        )
        say(
            f"target {self.target.name}: {len(ctx.forget_texts)} forget passages "
            f"({self.target.forget_corpus_source}); {others}run folder {self.original_folder}"
        )
        if state is None:
            self.evaluate("before", {})
            if cfg.eval.utility:
                self.utility["before"] = self.measure_utility()
        method.prepare(say)
        stages = method.stages()
        self.last_evaluated = next((s.name for s in reversed(stages) if s.evaluate), None)
        resume = self.restore(len(stages)) if state else None
        self.info.update(trainable_parameters=method.trainable_parameters(), training_data=method.training_data)
        self.run_folder.write_info(self.info)
        try:
            run_stages(
                stages,
                method.modules(),
                self.stage_end,
                self.log,
                checkpoint=self.save_checkpoint,
                every=cfg.run.checkpoint_every,
                resume=resume,
                autocast=lambda: torch.autocast(
                    self.device.type, dtype=torch.bfloat16, enabled=cfg.run.mixed_precision == "bf16"
                ),
                evaluate_every=cfg.eval.every,
                on_point=self.evaluate_point,
            )
            if cfg.eval.utility:
                self.utility["after"] = self.measure_utility()
                self.info["utility"] = self.utility
            self.save_results()
            self.record_update_size()
        except BaseException as e:  # the run folder says how it ended; the last checkpoint stays for --resume
            self.info.update(
                status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                error=str(e).splitlines()[0] if str(e) else type(e).__name__,
                seconds_before_resume=round(time.time() - self.started, 1),
            )
            try:
                self.run_folder.write_info(self.info)
            except OSError:
                pass
            raise
        finally:
            self.log.close()
        return self.finish()

    # -- the steps
    def open_folder(self) -> None:
        """The main process writes the run folder; the others compute the same run into a scratch folder."""
        self.original_folder = self.run_folder
        if not self.main:
            scratch = Run(tempfile.mkdtemp(prefix="atu-process-"))
            atexit.register(shutil.rmtree, scratch.path, True)
            if self.state is not None:  # what a resumed run reads back
                runs.write_bytes(scratch / runs.METRICS, (self.run_folder / runs.METRICS).read_bytes())
                scratch.write_info(self.run_folder.info())
            self.run_folder = scratch
        if self.state is None:
            self.run_folder.create(self.cfg.run.overwrite)
            self.run_folder.write_config(self.cfg)

    def ensure_forget_corpus(self) -> None:
        """RWKU's zero-shot setting when nothing is shipped: the model's own descriptions of the target."""
        target, cfg = self.target, self.cfg
        if not target.forget_corpus:
            say(
                f"no forget corpus is shipped for {target.name}: generating {cfg.data.generated_passages} passages "
                "from the model's own descriptions (RWKU zero-shot setting)"
            )
            target.forget_corpus = generate_corpus(
                self.model,
                self.tok,
                target.name,
                cfg.data.generated_passages,
                cfg.data.generated_max_new_tokens,
                cfg.run.seed,
            )
            if not target.forget_corpus:
                raise AtuError(
                    f"the model produced no usable description of {target.name}; pass data.forget_corpus=FILE"
                )
            target.forget_corpus_source = str(
                self.run_folder.write_generated_corpus(target.forget_corpus, target.name)
            )
        if target.forget_corpus_source == str(self.original_folder / runs.FORGET_CORPUS):
            self.notes.append(
                f"Forget corpus generated by the model itself ({len(target.forget_corpus)} passages), "
                f"saved in {runs.FORGET_CORPUS}."
            )
        if not target.probes:
            self.notes.append(
                f"No probes exist for {target.name}: nothing to evaluate; add RWKU-format probe files "
                "under data.roots."
            )
            say(self.notes[-1])

    def forget_passages(self) -> list[str]:
        corpus, limit = self.target.forget_corpus, self.cfg.data.max_passages
        return corpus[:limit] if limit else corpus

    def reworded_corpus(self) -> list[str]:
        """data.reword_forget: the model's own rewording of the forget passages, made once per run and kept in the
        run folder (a resumed run reads it back)."""
        texts = self.run_folder.reworded_corpus()
        if texts is None:
            forget = self.forget_passages()
            say(f"rewording {len(forget)} forget passages sentence by sentence (data.reword_forget)")
            started = time.time()
            bar = progress(sum(len(sentences(p)) for p in forget), "reword")
            texts = reword_passages(self.model, self.tok, forget, self.cfg.eval.batch_size, progress=bar.update)
            bar.close()
            self.run_folder.write_reworded_corpus(texts)
            say(f"kept the rewordings of {len(texts)} of {len(forget)} passages in {time.time() - started:.0f} s")
        self.notes.append(
            f"Forget corpus augmented with the model's own rewording of {len(texts)} passages (data.reword_forget), "
            f"saved in {runs.REWORDED_CORPUS}."
        )
        return texts

    def context(self) -> RunContext:
        cfg, target = self.cfg, self.target
        forget = self.forget_passages()
        return RunContext(
            model=self.model,
            tokenizer=self.tok,
            encoder=self.encoder,
            device=self.device,
            target=target,
            target_name=target.name,
            forget_texts=forget + self.reworded,
            # each other target gives at most as many passages as the target: balanced alignment data
            retain_texts=[t for o in self.others for t in o.forget_corpus[: len(forget)]],
            other_targets=[o.name for o in self.others],
            seed=cfg.run.seed,
            max_length=cfg.data.max_length,
            encoder_batch_size=cfg.encoder.batch_size,
            encoder_bf16=cfg.encoder.precision == "bf16"
            or (cfg.encoder.precision == "auto" and fast_bf16(self.device)),
            infer_batch_size=cfg.eval.batch_size,
            notes=self.notes,
        )

    def start_info(self, ctx: RunContext) -> dict:
        if self.state is None:
            self.started = time.time()
            return {
                "status": "running",
                "target": self.target.name,
                "method": self.cfg.method.name,
                "device": str(self.device),
                "probe_files": self.target.sources,  # which files the evaluation read (official or ours)
                "forget_corpus": self.target.forget_corpus_source,
                "forget_passages": len(ctx.forget_texts),
                "other_targets": ctx.other_targets,
                "encoder_precision": "bf16" if ctx.encoder_bf16 else "float32",  # encoder.precision=auto resolved
                "versions": runs.versions(),
                "started": time.strftime("%F %T"),
            }
        info = self.run_folder.info()
        self.started = time.time() - info.get("seconds_before_resume", 0)
        return info | {"status": "running", "resumed": info.get("resumed", []) + [time.strftime("%F %T")]}

    def evaluate(self, stage: str, info: dict) -> None:
        """Score the target's probes after a stage (or before unlearning); every prediction is kept."""
        if not self.target.probes:
            return
        if stage == "before" and self.reuse_before is not None:
            row = next(r for r in self.reuse_before.evals() if r["stage"] == "before") | {
                "reused_from": str(self.reuse_before)
            }
            self.run_folder.write_predictions("before", self.reuse_before.predictions("before"))
            self.record(row)
            say(eval_line(row) + f" (reused from {self.reuse_before})")
            return
        t0 = time.time()
        system = self.method.system_prompt if stage != "before" else None
        # RWKU's MIA figures (a forward over every MIA passage: minutes on a CPU) before unlearning and at the end
        mia = stage in ("before", self.last_evaluated)
        scores, records = evaluate(self.model, self.tok, self.target, self.cfg.eval, system, mia=mia)
        row = {
            "stage": stage,
            **{k: info[k] for k in ("tau", "tau_setting", "step") if k in info},
            **scores,
            "eval_seconds": round(time.time() - t0, 1),
        }
        self.record(row)
        self.run_folder.write_predictions(stage, records)
        say(eval_line(row))
        if self.cfg.eval.save_points and stage not in ("before", self.last_evaluated):
            self.save_point(stage, records)

    def save_point(self, stage: str, records: list[dict]) -> None:
        """eval.save_points: the model as this evaluation saw it, in a run folder of its own (RUN/points/<stage>/)
        whose last evaluation is this one, so `atu attack` treats it as a finished run."""
        point = Run(self.run_folder.path / runs.POINTS / stage)
        if self.main:
            point.create(overwrite=True)
            point.write_config(self.cfg)
            point.write_info({**self.info, "status": "done", "point_of": str(self.run_folder), "stage": stage})
            log = point.metrics_log()
            for row in self.history:
                log.append({"event": "eval", **row})
            log.close()
            point.write_predictions("before", self.run_folder.predictions("before"))
            point.write_predictions(stage, records)
        self.save_results(point)

    def stage_end(self, stage, info: dict) -> None:
        """Evaluate after a stage that asks for it; a skipped stage only when it is the last (the run's result)."""
        if stage.evaluate and (not info.get("skipped") or stage.name == self.last_evaluated):
            self.evaluate(stage.name, info)

    def evaluate_point(self, stage, step: int, info: dict) -> None:
        """An evaluation inside an unlearning stage (eval.every): a point on the run's trade-off front."""
        modes = [(m, m.training) for m in self.method.modules()]
        for m, _ in modes:
            m.eval()
        self.evaluate(f"{stage.name}@{step}", {**info, "step": step})
        for m, training in modes:
            m.train(training)

    def measure_utility(self) -> dict:
        e, seed = self.cfg.eval, self.cfg.run.seed
        return utility(self.model, self.tok, self.target, e.batch_size, e.utility_limit, e.mmlu_items, seed, say)

    def record(self, row: dict) -> None:
        self.history.append(row)
        self.log({"event": "eval", **row})

    def restore(self, n_stages: int) -> Resume:
        """Put the checkpoint's parameters and method state back; where to continue."""
        state, position = self.state, self.state["position"]
        say(f"resuming from {self.saved.name}: stage {position['stage'] + 1} of {n_stages}, step {position['step']}")
        with torch.no_grad():
            for i, module in enumerate(self.method.modules()):
                params = dict(module.named_parameters())
                for name, value in state["params"].get(str(i), {}).items():
                    params[name].copy_(place_like(value, params[name]))
        self.method.load_state_dict(state["method"])
        return Resume(position["stage"], position["step"], position["info"], state["optimizer"], state["rng"])

    def save_checkpoint(self, position: dict, optimizer, trained: set) -> None:
        sharded = is_sharded(self.model)
        if not self.main and not sharded:
            return
        # under FSDP every process takes part in gathering the shards, then the main one writes
        params = {
            str(i): {n: full(p) for n, p in m.named_parameters() if id(p) in trained}
            for i, m in enumerate(self.method.modules())
        }
        optimizer_state = gathered(optimizer.state_dict()) if optimizer is not None else None
        if self.main:
            ckpt.save(
                self.run_folder.checkpoints,
                {
                    "position": position,
                    "global_step": self.log.global_step,
                    "metrics_bytes": self.log.size,
                    "utility": self.utility,
                    "params": params,
                    "optimizer": optimizer_state,
                    "method": self.method.state_dict(),
                    "rng": ckpt.rng_state(),
                },
            )
        if self.main and os.environ.get(KILL_AT) == f"{position['stage']}:{position['step']}":
            os.kill(os.getpid(), signal.SIGKILL)  # a deterministic "kill -9" (the launcher then ends the others)

    def save_results(self, folder: Run | None = None) -> None:
        folder = folder or self.run_folder
        self.method.save(folder)
        to_save = self.method.model_to_save()
        if self.cfg.run.save_model and to_save is not None:
            sharded = is_sharded(self.model)
            weights = (
                {k: full(v) for k, v in to_save.state_dict().items()} if sharded else None
            )  # every process gathers
            if self.main:
                say(f"saving the unlearned model (safetensors) in {folder.model_dir}")
                folder.save_model(to_save, self.tok, weights)

    def record_update_size(self) -> None:
        """Would quantization undo this? The update against the 8/4-bit step (`atu attack --attacks update_size`),
        in the run's robustness table: the original model is reloaded on the CPU to compare with. Skipped under FSDP
        (the weights are shards) and where no base weight changed (adapters, GRUN: the table would be empty)."""
        if not (self.cfg.eval.update_size and self.main) or is_sharded(self.model):
            return
        started = time.time()
        try:
            original = load_lm(self.cfg.model, "cpu")[0]
            rows = update_size_rows(original, self.model)
            del original
        except (AtuError, OSError, RuntimeError) as e:  # a diagnostic: it must not fail a finished run
            self.notes.append(f"Update-size diagnostic skipped: {str(e).splitlines()[0]} (eval.update_size=false).")
            say(self.notes[-1])
            return
        for r in rows:
            r["seconds"] = round(time.time() - started, 1)
        if rows:
            table = [r for r in self.run_folder.attack_rows() if r["attack"] != "update_size"] + rows
            self.run_folder.write_attack_rows(table, report.attack_table(table).markdown())
            say(
                f"update against the int8 step: {rows[0]['after']:.1f}% of int8 codes changed "
                f"({time.time() - started:.0f} s)"
            )

    def finish(self) -> Path:
        self.info.update(status="done", seconds=round(time.time() - self.started, 1), notes=self.notes)
        self.info.pop("error", None)
        self.run_folder.write_info(self.info)
        if not self.cfg.run.keep_checkpoint:
            self.run_folder.drop_checkpoints()
        if self.main:
            report.write_run_report(self.run_folder)
            print_table(self.history)
            say(f"done in {self.info['seconds']:.0f} s; report: {self.run_folder / 'report.html'} (and report.md)")
        return self.original_folder.path


# ---------------------------------------------------------------- resuming


def resume_config(run_dir: Path, overrides: list[str]):
    """The configuration of the run in `run_dir`, for --resume. Overrides may repeat the run's own settings or change
    run.threads / run.device; anything else would make the resumed run a different experiment, so it is refused."""
    run = Run(run_dir).require()
    if run.status() == "done":
        raise AtuError(f"the run in {run} already finished; nothing to resume (its report is {run / 'report.html'})")
    saved = configlib.from_run(run)
    try:
        changed = configlib.from_run(run, overrides)
    except AtuError:
        raise AtuError(
            f"--resume with a changed config: {' '.join(overrides)}; resume with the run's own settings "
            "(drop the override) or start a new run"
        ) from None
    diffs = configlib.changes(saved, changed, RESUMABLE_CHANGES)
    if diffs:
        key, old, new = diffs[0]
        raise AtuError(
            f"--resume with a changed config: {key}={new} (the run used {old}); resume with the run's own "
            "settings (drop the override) or start a new run"
        )
    changed.run.output_dir = str(run.path)
    return changed


def resumable(run: Run, cfg) -> bool:
    """An interrupted run of exactly this configuration, with a checkpoint to continue from."""
    if ckpt.latest(run.checkpoints) is None or not run.is_run():
        return False
    return not configlib.changes(run.config(), cfg, RESUMABLE_CHANGES)


# ---------------------------------------------------------------- atu eval, and a finished run's model


def load_run_model(run: Run, cfg, device, quantize: str | None = None):
    """The model a finished run produced (its method puts it together): (model, tokenizer, system prompt)."""

    def load(path):
        model_cfg = OmegaConf.merge(cfg.model, {"name_or_path": str(path)}) if path is not None else cfg.model
        return load_lm(model_cfg, device, quantize)

    return rebuild(run, load)


def evaluate_only(cfg, out_file: str | None = None, run: Run | None = None) -> dict:
    """`atu eval`: score any model on any target's probes; a run folder's model is rebuilt by its method."""
    target = datalib.load_target(
        cfg.target, list(cfg.data.roots), cfg.data.allow_new_target, cfg.eval.max_probes_per_file
    )
    if not target.probes:
        raise AtuError(
            f"no probes exist for {target.name}; add RWKU-format probe files (forget_level1.json ...) "
            "in a folder and pass data.roots=[FOLDER]"
        )
    device = pick_device(cfg.run.device)
    say(
        f"loading model {run.model_dir if run is not None and run.has_model() else cfg.model.name_or_path} on {device}"
    )
    model, tok, system = load_run_model(run, cfg, device) if run is not None else (*load_lm(cfg.model, device), None)
    scores, records = evaluate(model, tok, target, cfg.eval, system)
    name = str(run.model_dir) if run is not None and run.has_model() else str(cfg.model.name_or_path)
    result = {"target": target.name, "model": name, "metrics": scores, "predictions": records}
    if cfg.eval.utility:
        e = cfg.eval
        result["utility"] = utility(model, tok, target, e.batch_size, e.utility_limit, e.mmlu_items, cfg.run.seed, say)
    if out_file:
        runs.write_json(Path(out_file), result)
    return result
