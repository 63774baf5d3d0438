"""Unlearning methods, registered by name. A method turns a run context into a list of training stages
(loss + parameters + data); the engine runs them and knows no method by name.

What the pipeline asks of a method class: `Config` (a dataclass), `needs_encoder`, `validate(cfg)`,
`check_model(cfg, model)`; of an instance built from (cfg, RunContext): `prepare(progress)`, `stages()`, `modules()`
(everything that may train), `trainable_parameters()`, `training_data` (what it trained on, for run.json),
`system_prompt` (text put before every probe, or None), `model_to_save()` (None: the base model is unchanged),
`save(run_folder)` for its own files, and `state_dict()`/`load_state_dict()`: what a checkpoint keeps besides the
parameters (see `common.Resumable`)."""
from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf

from ..errors import AtuError, did_you_mean

REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        REGISTRY[name] = cls
        return cls
    return wrap


def _load_all() -> None:
    from . import atu, grun, icu, rmu, token  # noqa: F401  (each registers itself)


def schemas() -> dict[str, type]:
    """Each method family's config dataclass, by schema name: ATUConfig -> "atu_schema", TokenConfig -> "token_schema"."""
    _load_all()
    return {cls.Config.__name__.removesuffix("Config").lower() + "_schema": cls.Config for cls in REGISTRY.values()}


def get_method(name: str):
    _load_all()
    if name not in REGISTRY:
        raise AtuError(f"unknown method {name!r}.{did_you_mean(name, REGISTRY)} Known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_config(node):
    """Validate cfg.method against the method's own dataclass: wrong keys or types fail here, with a clear message."""
    from omegaconf.errors import OmegaConfBaseException

    name = node.get("name") if node is not None else None
    if not name:
        raise AtuError("no method chosen; pass method=atu (or another registered method)")
    cls = get_method(str(name))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Config), node)
    except OmegaConfBaseException as e:
        key = getattr(e, "key", None) or str(e).splitlines()[0]
        valid = [f.name for f in fields(cls.Config)]
        raise AtuError(f"bad method setting {key!r} for {name}: {str(e).splitlines()[0]}.{did_you_mean(str(key), valid)}") from None
    cls.validate(merged)
    return merged
