"""Shared fixtures. Nothing here reaches the hub: HF_HUB_OFFLINE=1 and an empty, private hub cache."""

import os
import tempfile

# Set before anything imports huggingface_hub, which reads these once at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="lookalike-hub-cache-")
os.environ["LOOKALIKE_HOME"] = tempfile.mkdtemp(prefix="lookalike-home-")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (pytest -n): each worker's torch, and the CLIs it starts, on one thread, so the
    # workers do not fight over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where torch sees no CUDA device."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory):
    """The tiny twin saved as a diffusers folder (plus its single-file transformer)."""
    from lookalike.models.twin import save_twin

    return save_twin(tmp_path_factory.mktemp("twin") / "FLUX.1-twin")


@pytest.fixture(scope="session")
def twin_pipe(twin_dir):
    """A pipeline loaded from the twin folder through the same path as FLUX.1-dev."""
    import torch

    from lookalike.models.source import load_pipeline, resolve_source

    pipe = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_pipe(twin_dir):
    """A pipeline of its own for tests that load LoRAs into it (~0.1 s)."""
    import torch

    from lookalike.models.source import load_pipeline, resolve_source

    pipe = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: twin-sized matmuls gain nothing from threads, and on a busy
    2-core machine they lose 10x to contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
