"""Unlearning methods, registered by name. Each is a `Method` (see `base.py`: the contract, with defaults) in one file
that registers itself; `_load_all` imports those files, one line each. Adding a method: docs/contributing.md."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import settings
from ..errors import AtuError, did_you_mean
from ..runs import Run
from .base import REGISTRY, Method, RunContext, register

__all__ = ["Method", "RunContext", "REGISTRY", "register", "get_method", "method_config", "schemas", "rebuild"]


def _load_all() -> None:
    from . import atu, grun, icu, rmu, token  # noqa: F401  (each file registers itself)


def schemas() -> dict[str, type]:
    """Each method family's config dataclass by schema name (ATUConfig -> "atu_schema", TokenConfig -> ...)."""
    _load_all()
    return {cls.Config.__name__.removesuffix("Config").lower() + "_schema": cls.Config for cls in REGISTRY.values()}


def get_method(name: str) -> type[Method]:
    _load_all()
    if name not in REGISTRY:
        raise AtuError(f"unknown method {name!r}.{did_you_mean(name, REGISTRY)} Known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_config(node):
    """Validate cfg.method against the method's own dataclass: wrong keys, types or ranges fail here, in one line."""
    name = node.get("name") if node is not None else None
    if not name:
        raise AtuError("no method chosen; pass method=atu (or another registered method)")
    cls = get_method(str(name))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Config), node)
    except OmegaConfBaseException as e:
        key = getattr(e, "key", None) or str(e).splitlines()[0]
        valid = [f.name for f in fields(cls.Config)]
        raise AtuError(
            f"bad method setting {key!r} for {name}: {str(e).splitlines()[0]}.{did_you_mean(str(key), valid)}"
        ) from None
    settings.check("method", cls.Config, merged)
    cls.validate(merged)
    return merged


def rebuild(run: Run, load):
    """The model a finished run produced, put together by its method: (model, tokenizer, system prompt)."""
    return get_method(str(run.config().method.name)).rebuild(run, load)
