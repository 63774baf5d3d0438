import os

import pytest
import torch

from atu.environment import offline_and_quiet

offline_and_quiet()  # the tests' processes start like the commands: offline, third-party noise off

# Parallel workers (pytest-xdist, pyproject addopts) share the cores: each worker, and the processes its tests start,
# gets its share of threads, so two workers on two cores do not each run two threads and thrash.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _share = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)


# Modules whose tests start processes or run the real model (tens of seconds to minutes each), started first so the
# parallel workers never finish on one long test alone; the order within each group is unchanged.
LONG_FIRST = ("test_embedded.py", "test_scale.py", "test_resume.py", "test_report.py", "test_attacks.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


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
