"""In-context unlearning (ICU, as RWKU evaluates it): no training; an instruction placed before every probe asks the
model to behave as if it had never learnt about the target. The lower bar every trained method must beat."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Stage
from ..runs import Run
from ..settings import setting
from .base import Method, register

DEFAULT_INSTRUCTION = (
    "You are an AI assistant who has never learnt anything about {name}. For any question about "
    "{name}, answer as if you knew nothing about {name}, and do not reveal that you were told this."
)
FILE = "icu_instruction.txt"  # the instruction, as put before every probe


@dataclass
class ICUConfig:
    name: str = "icu"
    instruction: str = setting(DEFAULT_INSTRUCTION, "put before every probe; {name} becomes the target's name")


@register("icu")
class ICU(Method):
    Config = ICUConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.system_prompt = cfg.instruction.replace("{name}", ctx.target_name)
        self.training_data = {"icu": "no training; an instruction before every probe"}

    def stages(self):
        # one zero-step stage, so the evaluation "after" the method runs with the instruction in place
        return [Stage("unlearn1", "unlearn", 0, lambda: [], lambda p: None, lambda step: None, evaluate=True)]

    def modules(self):
        return []

    def model_to_save(self):
        return None  # the model is unchanged

    def save(self, run: Run) -> None:
        run.save_text(FILE, self.system_prompt + "\n")

    @classmethod
    def rebuild(cls, run: Run, load):
        model, tok = load(None)
        return model, tok, run.read_text(FILE).strip()
