"""The process environment every entry point (`atu`, `atu-sweep`) sets first, before torch or the Hugging Face
libraries are imported (they read these variables at import time)."""

from __future__ import annotations

import logging
import os


def offline_and_quiet() -> None:
    """No hub access unless the user turns it on, and no third-party warnings that read like failures of ours.
    bitsandbytes (imported by peft and sentence-transformers) tries, on CPUs with avx512_bf16, to fetch an optional
    4-bit kernel from the hub and warns twice when it cannot; its own CPU code runs then, so there is nothing for a
    user to act on."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
