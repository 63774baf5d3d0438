"""The contract between a method and the rest of atu, in code.

A method is a config dataclass plus a class that turns a run's context into training stages (loss + parameters +
steps). The job runner calls, in order: `validate(cfg)` (at config load), `check_model(cfg, model)` (before the run
folder exists), `Method(cfg, ctx)`, `prepare(say)`, `stages()`, then the engine runs them; at the end `save(run)`
and `model_to_save()`. A checkpoint keeps the parameters of `modules()` and the method's `state_dict()`. To score a
finished run, `rebuild(run, load)` puts the method's model back together. Everything but `Config` and `stages` has a
default here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import Target, general_retain
from ..engine import Stage
from ..runs import Run
from .common import count_parameters, merged


REGISTRY: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator: the method is chosen in config as `method=<name>`."""

    def wrap(cls):
        REGISTRY[name] = cls
        return cls

    return wrap


@dataclass
class RunContext:
    """What a method gets from the job: the model and data of this run."""

    model: object
    tokenizer: object
    encoder: object
    device: torch.device
    target: Target
    target_name: str
    forget_texts: list[str]
    retain_texts: list[str]  # other targets' forget corpora (ATU's alignment data, GRUN's gate negatives)
    other_targets: list[str]
    general_texts: list[str] = field(default_factory=general_retain)  # unrelated text for retain losses
    seed: int = 0
    max_length: int = 128
    encoder_batch_size: int = 256
    encoder_bf16: bool = False  # encode under bf16 autocast (encoder.precision)
    infer_batch_size: int = 16
    notes: list[str] = field(default_factory=list)


class Method:
    Config: type  # the method's settings (a dataclass): every field a documented default
    needs_encoder = False  # load the sentence encoder for it
    uses_other_targets = False  # read other targets' forget corpora (ctx.retain_texts)
    data_parallel = False  # runs under `accelerate launch` with several processes
    system_prompt: str | None = None  # text put before every probe when the unlearned model is evaluated

    def __init__(self, cfg, ctx: RunContext):
        self.cfg, self.ctx = cfg, ctx
        self.gen = torch.Generator().manual_seed(ctx.seed)  # the method draws its batches from its own generator
        self.training_data: dict = {}  # what it trained on, for run.json

    # -- before anything runs
    @staticmethod
    def validate(cfg) -> None:
        """Rules across settings (single-setting ranges are checked from the dataclass's metadata)."""

    @classmethod
    def check_model(cls, cfg, model) -> None:
        """Settings that depend on the model (a layer index within its depth), before the run folder exists."""

    # -- the run
    def prepare(self, say=lambda msg: None) -> None:
        """Build the training data and anything computed once (reference log-probs, cached states)."""

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """Everything that may train: its parameters are what a checkpoint keeps."""
        return [self.ctx.model]

    def params(self) -> list[torch.nn.Parameter]:
        """The parameters unlearning trains."""
        return []

    def trainable_parameters(self) -> int:
        return count_parameters(self.params())

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method besides the parameters (extend for more state across stages)."""
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

    # -- its results
    def model_to_save(self):
        """The model to write as the run's `model/` (None: the base model is unchanged, nothing to save)."""
        return merged(self.ctx.model)

    def save(self, run: Run) -> None:
        """The method's own files in the run folder (through `run`'s writers); by default a LoRA adapter, if any."""
        if hasattr(self.ctx.model, "peft_config"):
            run.save_adapter(self.ctx.model)

    @classmethod
    def representation_layers(cls, run: Run) -> list[int]:
        """The layers whose representation the method changed, the main one first (the probe attack reads at each);
        [] when it has none."""
        return []

    @classmethod
    def rebuild(cls, run: Run, load) -> tuple[object, object, str | None]:
        """The model a finished run produced: (model, tokenizer, system prompt). `load(path_or_None)` loads the run's
        saved model folder, or the base model for None."""
        model, tok = load(run.model_dir if run.has_model() else None)
        return model, tok, None
