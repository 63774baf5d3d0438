"""Where a run's numbers go: `metrics.jsonl` in the run folder always; TensorBoard and Weights & Biases only when
`run.loggers` names them (wandb offline unless run.wandb_mode says otherwise; no entity is set, wandb's own default
applies)."""

from __future__ import annotations

import importlib.util

from omegaconf import OmegaConf

from .errors import AtuError
from .runs import Run

LOGGERS = ("tensorboard", "wandb")


def check_loggers(names) -> None:
    """Before the run starts: every logger is known and its package importable."""
    for name in names:
        if name not in LOGGERS:
            raise AtuError(
                f"run.loggers has {name!r}; known loggers: {', '.join(LOGGERS)} (metrics.jsonl is always written)"
            )
        if importlib.util.find_spec(name) is None:
            raise AtuError(f"run.loggers has {name} but the {name} package is not installed; pip install {name}")


class MetricsLog:
    """The run's metrics.jsonl (append-only), mirrored as scalars to the opted-in loggers.

    `size` is the byte length of metrics.jsonl; a checkpoint stores it and a resumed run truncates the file to it, so
    records written after the checkpoint (and repeated on resume) appear once."""

    def __init__(self, run: Run, loggers, cfg, run_info: dict, resume_bytes: int | None = None, resume_step: int = 0):
        out = run.path
        self.file = run.metrics_log(resume_bytes)
        self.global_step = resume_step
        self.tensorboard = self.wandb = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter  # optional: only when run.loggers names it

            # purge_step drops events a killed run wrote after its last checkpoint
            self.tensorboard = SummaryWriter(
                str(out / "tensorboard"), purge_step=resume_step if resume_bytes else None
            )
        if "wandb" in loggers:
            import secrets

            import wandb  # optional: only when run.loggers names it

            run_info.setdefault(
                "wandb_id", secrets.token_hex(4)
            )  # kept in run.json: a resumed run logs to the same run
            self.wandb = wandb.init(
                project=cfg.run.wandb_project,
                mode=cfg.run.wandb_mode,
                dir=str(out),
                name=out.name,
                id=run_info["wandb_id"],
                resume="allow",
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(console="off"),
            )  # our terminal stays ours: bars, tables

    @property
    def size(self) -> int:
        return self.file.size

    def __call__(self, record: dict) -> None:
        self.file.append(record)
        if record.get("event") == "step":
            self.global_step = record["global_step"]
            prefix = record["stage"] + "/"
        elif record.get("event") == "eval":
            prefix = "eval/"
        else:
            return
        scalars = {
            prefix + k: v
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "global_step")
        }
        if self.tensorboard:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, self.global_step)
            self.tensorboard.flush()
        if self.wandb:
            self.wandb.log(scalars, step=self.global_step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()
