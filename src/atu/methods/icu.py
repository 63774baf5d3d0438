"""In-context unlearning (ICU, as RWKU evaluates it): no training; an instruction placed before every probe asks the
model to behave as if it had never learnt about the target. The lower bar every trained method must beat."""
from __future__ import annotations

from dataclasses import dataclass

from . import register

DEFAULT_INSTRUCTION = ("You are an AI assistant who has never learnt anything about {name}. For any question about "
                       "{name}, answer as if you knew nothing about {name}, and do not reveal that you were told this.")


@dataclass
class ICUConfig:
    name: str = "icu"
    instruction: str = DEFAULT_INSTRUCTION  # {name} becomes the target's name


@register("icu")
class ICU:
    Config = ICUConfig
    needs_encoder = False

    @staticmethod
    def validate(cfg) -> None:
        pass

    @classmethod
    def check_model(cls, cfg, model) -> None:
        pass

    def __init__(self, cfg, ctx):
        self.ctx = ctx
        self.system_prompt = cfg.instruction.replace("{name}", ctx.target_name)
        self.training_data = {"icu": "no training; an instruction before every probe"}

    def prepare(self, progress=lambda msg: None) -> None:
        pass

    def stages(self):
        from ..engine import Stage

        # one zero-step stage, so the evaluation "after" the method runs with the instruction in place
        return [Stage("unlearn1", "unlearn", 0, lambda: [], lambda p: None, lambda step: None, evaluate=True)]

    def modules(self):
        return []

    def state_dict(self) -> dict:
        return {}  # nothing trains, nothing to resume

    def load_state_dict(self, state: dict) -> None:
        pass

    def trainable_parameters(self) -> int:
        return 0

    def model_to_save(self):
        return None  # the model is unchanged

    def save(self, out) -> None:
        (out / "icu_instruction.txt").write_text(self.system_prompt + "\n")
