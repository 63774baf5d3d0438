"""Checkpoints that survive SIGKILL, stored without pickle.

A checkpoint is a folder `checkpoints/ckpt-NNNNNN/` holding `tensors.safetensors` and `state.json` (the nested state
with every tensor replaced by a reference into the safetensors file). `checkpoints/latest.json` names the last
complete one and is replaced atomically (write a temporary file, then rename) only after the folder is complete, so
a kill at any moment leaves the previous checkpoint usable. Older folders are deleted after the pointer moves.

Written by hand because torch.save pickles (loading it can run code) and safetensors stores flat tensor maps only:
optimizer states, RNG states and positions are nested, with integer keys.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .runs import save_tensors, write_text

POINTER = "latest.json"


def flatten(obj, tensors: dict[str, torch.Tensor], seen: dict[int, str] | None = None):
    """A JSON-able copy of `obj` with each tensor copied into `tensors` (named t0, t1, ...) and referenced by name.
    A tensor met twice (the head's Adam state is both the method's and the current stage's) is stored once."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen[id(obj)] = f"t{len(tensors)}"
            tensors[seen[id(obj)]] = obj.detach().to("cpu", copy=True).contiguous()  # copies share no storage
        return {"__tensor__": seen[id(obj)]}
    if isinstance(obj, np.ndarray):  # numpy's RNG key: 624 uint32 values
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, tensors, seen) for k, v in obj.items()}
        return {"__items__": [[k, flatten(v, tensors, seen)] for k, v in obj.items()]}  # optimizer states: int keys
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors, seen) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__items__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    return {k: unflatten(v, tensors) for k, v in obj.items()}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, state: dict) -> Path:
    """Write `state` as the newest complete checkpoint under `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = latest(folder)
    number = int(previous.name.split("-")[1]) + 1 if previous else 1
    final = folder / f"ckpt-{number:06d}"
    tmp = folder / f".tmp-ckpt-{number:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    save_tensors(tmp / "tensors.safetensors", tensors)
    write_text(tmp / "state.json", json.dumps(skeleton), durable=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_text(folder / POINTER, json.dumps({"checkpoint": final.name}), durable=True)
    for old in folder.glob("ckpt-*"):  # only the newest is kept: a checkpoint of a large model is large
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(folder: Path) -> Path | None:
    """The last complete checkpoint folder, or None."""
    try:
        name = json.loads((folder / POINTER).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None
    path = folder / name
    return path if (path / "state.json").exists() and (path / "tensors.safetensors").exists() else None


def load(path: Path) -> dict:
    """The state saved in checkpoint folder `path`, tensors on the CPU (copy_ and optimizers move them)."""
    return unflatten(json.loads((path / "state.json").read_text()), load_file(str(path / "tensors.safetensors")))
