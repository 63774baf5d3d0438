import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's real tokenizer (262k vocabulary)."""
    from atu.models import gemma_tokenizer, prepare_tokenizer

    tok = gemma_tokenizer()
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def encoder():
    """The real embedded sentence encoder (all-MiniLM-L6-v2)."""
    from omegaconf import OmegaConf

    from atu.models import load_encoder

    return load_encoder(OmegaConf.create({"name_or_path": "embedded:all-minilm-l6-v2", "batch_size": 64}))


@pytest.fixture
def tiny_model():
    from atu.models import tiny_lm

    return tiny_lm(seed=0).eval()


def manual_seed(seed=0):
    torch.manual_seed(seed)
