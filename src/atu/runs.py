"""The run folder, and every file atu writes: one owner.

A run folder (`runs/<target>-<method>-<time>/`) has the layout below. Every file in it, and every other file atu
writes (reports, comparison tables, the converted-model cache), goes through the writers here: a temporary file (or
folder) first, then a rename, so a reader, or a run resumed after a kill, never sees half a file. Nothing is pickled.
Reading a run back (its config, status, evaluations, predictions, attack rows) is here too, so no other module knows
a file name. Tensorboard and wandb write their own files (`run.loggers`), through their libraries.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import zipfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from .errors import AtuError

CONFIG = "config.yaml"  # the fully resolved configuration
INFO = "run.json"  # target, data used, status, timings, versions
METRICS = "metrics.jsonl"  # every logged step, stage start/end and evaluation
PREDICTIONS = "predictions"  # <stage>.json: every probe with its answer and score
MODEL = "model"  # the unlearned model, a plain Hugging Face folder
ADAPTER = "adapter"  # the LoRA adapter, when the method trained one
CHECKPOINTS = "checkpoints"  # the last complete checkpoint, while running
ATTACKS = "attacks"  # attacks.json + attacks.md
POINTS = "points"  # <stage>/: the model at an evaluation point, a run folder of its own (eval.save_points)
FORGET_CORPUS = "forget_corpus.json"  # a corpus the run generated for itself
REWORDED_CORPUS = "forget_corpus_reworded.json"  # data.reword_forget: the model's rewording of the forget corpus
REPORT = ("report.md", "report.html")
MANIFEST = ".manifest.json"  # an unpacked archive's members and sizes
COMPARE = ("compare.md", "compare.csv")


# ---------------------------------------------------------------- atomic writers


def _tmp(path: Path) -> Path:
    # the process id keeps two processes filling the same cache entry apart (a sweep's jobs on a fresh machine)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with tmp.open("wb") as f:
        f.write(data)
        if durable:  # checkpoint pointers: on disk before the rename makes them visible
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def write_text(path: Path, text: str, durable: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: Path, obj, durable: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False), durable)


def write_yaml(path: Path, cfg) -> None:
    write_text(path, OmegaConf.to_yaml(cfg))


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["method"], restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())


def save_tensors(path: Path, tensors: dict) -> None:
    """safetensors, written beside and renamed (a model-sized file is not held twice in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(_tmp(path)))
    _tmp(path).replace(path)


@contextmanager
def atomic_folder(path: Path):
    """Yields a temporary folder to fill; it replaces `path` only if the block completes (a failed or killed save
    leaves the previous folder, or none, never half of one)."""
    path = Path(path)
    tmp = _tmp(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    try:
        tmp.rename(path)
    except OSError:
        if not path.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process put its copy of the same folder in place first


def save_pretrained(obj, path: Path, **kwargs) -> None:
    """A Hugging Face object's own folder (a model, a tokenizer, a peft adapter), atomically."""
    with atomic_folder(path) as tmp:
        obj.save_pretrained(tmp, **kwargs)


def save_model(model, tokenizer, path: Path, state_dict: dict | None = None) -> None:
    """A plain Hugging Face folder (safetensors) that AutoModelForCausalLM.from_pretrained loads; with `state_dict`,
    those weights (an FSDP model's, gathered)."""
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        config = json.loads((tmp / "config.json").read_text())
        # FSDP2 renames the class it wraps (FSDPGemma3ForCausalLM); the saved config names the model's own class
        config["architectures"] = [a.removeprefix("FSDP") for a in config.get("architectures") or []]
        write_text(tmp / "config.json", json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)


def unpack_parts(parts: list[Path], folder: Path) -> list[tuple[str, int]]:
    """A zip archive split into byte chunks (`parts`, in order), unpacked into `folder` atomically; returns the
    member list (name, size), which `unpacked_complete` checks later. Raises zipfile.BadZipFile on a broken archive."""
    with atomic_folder(folder) as tmp:
        archive = tmp / ".archive.zip"
        with archive.open("wb") as out:
            for part in parts:
                with Path(part).open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 24)
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()  # every member's CRC
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad} is corrupt")
            members = [(i.filename, i.file_size) for i in z.infolist() if not i.is_dir()]
            z.extractall(tmp)
        archive.unlink()
        write_json(tmp / MANIFEST, members)
    return members


def unpacked_complete(folder: Path) -> bool:
    """Whether `folder` holds every member of its manifest at its recorded size (a killed or corrupted unpack not)."""
    try:
        members = json.loads((Path(folder) / MANIFEST).read_text())
        return all(
            (Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size for name, size in members
        )
    except (OSError, ValueError):
        return False


class AppendLog:
    """An append-only JSONL file (metrics.jsonl). `truncate` cuts it back to a checkpoint's byte length on resume, so
    records written after the checkpoint (and repeated by the resumed run) appear once."""

    def __init__(self, path: Path, truncate: int | None = None):
        if truncate is not None:
            with path.open("r+b") as f:
                f.truncate(truncate)
        self.file = path.open("a")

    @property
    def size(self) -> int:
        self.file.flush()
        return self.file.tell()

    def append(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------- a run folder


class Run:
    """A run folder: where each file lives, and reading and writing them."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # -- what is there
    def is_run(self) -> bool:
        return (self.path / INFO).exists() and (self.path / CONFIG).exists()

    def require(self) -> "Run":
        if not self.is_run():
            raise AtuError(f"{self.path} is not a run folder (no {INFO}/{CONFIG}); pass the folder atu unlearn wrote")
        return self

    def has_model(self) -> bool:
        return (self.path / MODEL).is_dir()

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # -- creating it
    def create(self, overwrite: bool) -> None:
        """An empty, writable folder (a non-empty one only with `overwrite`, which clears it)."""
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise AtuError(
                    f"run folder {self.path} already exists; pick another run.output_dir or pass run.overwrite=true"
                )
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.path / ".write_test", "ok")
            (self.path / ".write_test").unlink()
        except OSError as e:
            raise AtuError(
                f"cannot write run folder {self.path}: {e.strerror}; choose a writable run.output_dir"
            ) from None

    # -- config and info
    def config(self) -> DictConfig:
        return OmegaConf.load(self.path / CONFIG)

    def write_config(self, cfg) -> None:
        write_yaml(self.path / CONFIG, cfg)

    def info(self) -> dict:
        return json.loads((self.path / INFO).read_text())

    def write_info(self, info: dict) -> None:
        write_json(self.path / INFO, info)

    def status(self) -> str | None:
        """run.json's status ("running", "done", "failed", "interrupted"), or None without a readable run.json."""
        try:
            return self.info().get("status")
        except (OSError, ValueError):
            return None

    # -- evaluations
    def metrics_log(self, truncate: int | None = None) -> AppendLog:
        return AppendLog(self.path / METRICS, truncate)

    def records(self) -> list[dict]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def evals(self) -> list[dict]:
        """The evaluation rows ('before' first, then each stage), without the "event" key."""
        return [{k: v for k, v in r.items() if k != "event"} for r in self.records() if r.get("event") == "eval"]

    def predictions(self, stage: str) -> list[dict] | None:
        path = self.path / PREDICTIONS / f"{stage}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_predictions(self, stage: str, records: list[dict]) -> None:
        write_json(self.path / PREDICTIONS / f"{stage}.json", records)

    # -- a forget corpus the run generated
    def generated_corpus(self) -> Path | None:
        path = self.path / FORGET_CORPUS
        return path if path.exists() else None

    def write_generated_corpus(self, texts: list[str], subject: str) -> Path:
        write_json(self.path / FORGET_CORPUS, [{"text": t, "subject": subject} for t in texts])
        return self.path / FORGET_CORPUS

    def reworded_corpus(self) -> list[str] | None:
        path = self.path / REWORDED_CORPUS
        return [item["text"] for item in json.loads(path.read_text())] if path.exists() else None

    def write_reworded_corpus(self, texts: list[str]) -> None:
        write_json(self.path / REWORDED_CORPUS, [{"text": t, "source": "the model's own rewording"} for t in texts])

    # -- attacks
    def attack_rows(self) -> list[dict]:
        path = self.path / ATTACKS / "attacks.json"
        return json.loads(path.read_text()) if path.exists() else []

    def write_attack_rows(self, rows: list[dict], markdown: str) -> None:
        write_json(self.path / ATTACKS / "attacks.json", rows)
        write_text(self.path / ATTACKS / "attacks.md", markdown + "\n")

    # -- a method's own files (the head, an intervention, an instruction): named by the method
    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def save_json(self, name: str, obj) -> None:
        write_json(self.path / name, obj)

    def read_text(self, name: str) -> str:
        return (self.path / name).read_text()

    def save_text(self, name: str, text: str) -> None:
        write_text(self.path / name, text)

    def read_tensors(self, name: str) -> dict:
        return load_file(str(self.path / name))

    def save_tensors(self, name: str, tensors: dict) -> None:
        save_tensors(self.path / name, tensors)

    def save_adapter(self, model) -> None:
        save_pretrained(model, self.path / ADAPTER)

    def save_model(self, model, tokenizer, state_dict: dict | None = None) -> None:
        save_model(model, tokenizer, self.path / MODEL, state_dict)

    def drop_checkpoints(self) -> None:
        shutil.rmtree(self.path / CHECKPOINTS, ignore_errors=True)


def versions() -> dict:
    """The versions of what produced a run (recorded in run.json at its start)."""
    out = {"python": platform.python_version()}
    for pkg in ("atu", "torch", "transformers", "peft", "sentence-transformers", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def read_json_or(path: Path, default):
    """A JSON file this module wrote (a partial result to continue), or `default` when there is none yet."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def finished_runs(folder: Path) -> list[Run]:
    """Every finished run folder below `folder` (a sweep or a comparison), sorted by path. The models a run kept at
    its evaluation points (eval.save_points, RUN/points/<stage>/) belong to that run's front, not runs of their own."""
    found = [Run(p.parent) for p in sorted(Path(folder).rglob(INFO))]
    return [run for run in found if run.status() == "done" and "point_of" not in run.info()]


def read_csv(path: Path) -> list[dict]:
    """A CSV this module wrote, with numbers parsed back."""
    with Path(path).open() as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str):
    if value == "":
        return None
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value
