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


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_atu(*args) -> Result:
    """`atu ARGS` in this process: the same code path as the command (atu.cli.main), without paying the interpreter
    and library start-up for each call. Tests where the process boundary matters (kills, terminals, file-size limits,
    several processes) start real subprocesses instead."""
    import contextlib
    import io

    from atu.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    torch.set_num_threads(threads)  # run.threads must not leak into the next test
    return Result(code, out.getvalue(), err.getvalue())
