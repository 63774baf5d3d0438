"""Documented, range-checked config fields: every setting says what it is, its default and its valid range in one
place, and a bad value is one clear line at load time, before anything runs or is written."""

from __future__ import annotations

from dataclasses import MISSING, field, fields

from .errors import AtuError


def setting(default, help: str = "", *, at_least=None, above=None, at_most=None, choices=None, each=None):
    """A config dataclass field. `at_least`/`above`/`at_most` bound a number (or every element of a list with
    `each=True`); `choices` lists the valid strings. None as a value always passes (it means "not set")."""
    kind = {"default_factory": (lambda: list(default))} if isinstance(default, list) else {"default": default}
    meta = {"help": help, "at_least": at_least, "above": above, "at_most": at_most, "choices": choices, "each": each}
    return field(**kind, metadata=meta)


def check(prefix: str, schema, node) -> None:
    """Every field of `schema` (a dataclass) against its bounds, reading values from `node` (an OmegaConf node)."""
    for f in fields(schema):
        meta = f.metadata
        if not meta or f.name not in node:
            continue
        value = node[f.name]
        values = list(value) if meta.get("each") else [value]
        for v in values:
            if v is None:
                continue
            where = f"{prefix}.{f.name}={list(value) if meta.get('each') else value}"
            if meta["choices"] is not None and v not in meta["choices"]:
                raise AtuError(f"{where} is not one of {', '.join(map(str, meta['choices']))}")
            if meta["at_least"] is not None and v < meta["at_least"]:
                raise AtuError(f"{where} must be at least {meta['at_least']}")
            if meta["above"] is not None and not v > meta["above"]:
                raise AtuError(f"{where} must be greater than {meta['above']}")
            if meta["at_most"] is not None and v > meta["at_most"]:
                raise AtuError(f"{where} must be at most {meta['at_most']}")


def describe(schema) -> list[tuple[str, object, str]]:
    """(name, default, help) of every field: the text of `atu settings`."""
    out = []
    for f in fields(schema):
        default = (
            f.default
            if f.default is not MISSING
            else f.default_factory()
            if f.default_factory is not MISSING
            else None
        )
        out.append((f.name, default, f.metadata.get("help", "")))
    return out
