"""Shared by the benchmarks: the environment record, model builders (real embedded models, or random-weight models
shaped like the paper's Phi-3-mini and MPNet for GPU timing), the alignment text, and where results go."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PHI3_MINI = dict(
    hidden_size=3072,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=8192,
    vocab_size=32064,
    max_position_embeddings=4096,
)


def environment(device: torch.device) -> dict:
    from importlib.metadata import version

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        model = (
            [
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ]
            if Path("/proc/cpuinfo").exists()
            else [platform.processor()]
        )
        name = f"{model[0] if model else 'cpu'} ({torch.get_num_threads()} threads)"
    from atu.models import fast_bf16

    return {
        "device": str(device),
        "device_name": name,
        "fast_bf16": fast_bf16(device),  # avx512_bf16/AMX on a CPU: whether bf16 paths are worth taking
        "date": time.strftime("%F %T"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "sentence_transformers": version("sentence-transformers"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def result_path(name: str, device: torch.device, model: str) -> Path:
    """results/<name>-<device>-<model>.json; a CPU without fast bf16 gets its own file (`-nobf16`): the bf16 paths'
    timings differ by up to 8x between such CPUs, so one must not overwrite the other."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    from atu.models import fast_bf16

    suffix = "" if device.type != "cpu" or fast_bf16(device) else "-nobf16"
    return RESULTS / f"{name}-{device.type}{suffix}-{Path(model).name}.json"


def load_models(model_name: str, encoder_name: str, device: torch.device, dtype: torch.dtype):
    """(LM, tokenizer, sentence encoder, hook layer). Random-weight shapes keep the embedded tokenizers; token ids are
    folded into the shaped model's vocabulary (timing does not depend on which ids)."""
    from omegaconf import OmegaConf

    from atu.models import gemma_tokenizer, load_encoder, load_lm, prepare_tokenizer

    if model_name == "phi3-shape":
        from transformers import AutoModelForCausalLM, Phi3Config

        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(Phi3Config(**PHI3_MINI, pad_token_id=0), dtype=dtype)
        tok = FoldedTokenizer(gemma_tokenizer(), PHI3_MINI["vocab_size"])
        layer = 29  # the paper's hook layer
    else:
        name = "embedded:gemma3-270m" if model_name == "embedded" else model_name
        model, tok = load_lm(
            OmegaConf.create(
                {
                    "name_or_path": name,
                    "dtype": str(dtype).split(".")[-1],
                    "trust_remote_code": False,
                    "revision": None,
                    "local_files_only": True,
                }
            ),
            device,
        )
        layer = round(0.9 * model.config.get_text_config().num_hidden_layers)
    prepare_tokenizer(tok)
    model.eval().requires_grad_(False)
    encoder = load_encoder(OmegaConf.create({"name_or_path": "embedded:all-minilm-l6-v2", "batch_size": 512}), device)
    if encoder_name == "mpnet-shape":
        encoder = mpnet_shaped(encoder, device)
    return model, tok, encoder, layer


def mpnet_shaped(minilm, device):
    """A random 12-layer, 768-wide BERT (MPNet's size and cost) behind MiniLM's tokenizer and mean pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling
    from transformers import BertConfig, BertModel

    transformer = minilm[0]
    torch.manual_seed(0)
    transformer.auto_model = (
        BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
        .to(device)
        .eval()
    )
    return SentenceTransformer(modules=[transformer, Pooling(768, "mean"), Normalize()], device=str(device)).eval()


class FoldedTokenizer:
    """The embedded tokenizer with ids folded into a smaller vocabulary (for a random model of another shape)."""

    def __init__(self, tok, vocab: int):
        self.tok, self.vocab = tok, vocab

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __setattr__(self, name, value):
        if name in ("tok", "vocab"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.tok, name, value)

    def __call__(self, *args, **kwargs):
        enc = self.tok(*args, **kwargs)
        ids = enc["input_ids"]
        enc["input_ids"] = [i % self.vocab for i in ids] if ids and isinstance(ids[0], int) else ids
        return enc

    @property
    def bos_token_id(self):
        return self.tok.bos_token_id % self.vocab

    @property
    def pad_token_id(self):
        return self.tok.pad_token_id % self.vocab


def texts_for(target: str, n: int) -> list[str]:
    """ATU's alignment text: the target's forget corpus, then other targets' corpora, up to n passages."""
    from atu import data as datalib

    texts = list(datalib.load_target(target).forget_corpus)
    for other in datalib.other_targets(target, 10, [], 0):
        texts += other.forget_corpus[:32]
    return texts[:n]
