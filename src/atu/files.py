"""Every file atu writes into a run folder is written atomically: a temporary file, then a rename, so a reader (or a
resumed run after a kill) never sees half a file."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: Path, text: str, durable: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        if durable:  # checkpoint pointers: on disk before the rename makes them visible
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))
