"""How the triton backend reaches the kernels: fastbert/kernels/_runtime.py chooses Triton's interpreter
once, where there is no GPU, whatever was imported first; the torch backend needs no triton at all; the
errors say what to do where the choice cannot serve the device asked for."""

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.bert_factory import random_bert
from tests.kernels.compile_check import REPO_ROOT
from tests.tolerances import ENCODER_TOLERANCES

PROGRAM = """
    import torch
    from fastbert import FastBertModel
    model = FastBertModel.from_pretrained({folder!r}, device="cpu", backend="triton")
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    print(model(ids, (ids != 0).long()).last_hidden_state.shape)
"""


def _run(code, **env_overrides):
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", **env_overrides}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen on CPU-only machines")
def test_triton_backend_on_cpu_needs_no_setup(tmp_path):
    random_bert(tmp_path)
    result = _run(PROGRAM.format(folder=str(tmp_path)))  # no TRITON_INTERPRET in its environment
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 4, 64])" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen on CPU-only machines")
@pytest.mark.parametrize("prelude", ["import triton", "import transformers, sentence_transformers"])
def test_triton_backend_on_cpu_works_whatever_was_imported_first(tmp_path, prelude):
    # Triton's own library functions (tl.sum, tl.cdiv) are decorated for the GPU when triton is imported
    # without TRITON_INTERPRET (sentence-transformers imports it): fastbert.kernels decorates them again.
    random_bert(tmp_path)
    program = PROGRAM + """
    reference = FastBertModel.from_pretrained({folder!r}, device="cpu", backend="torch")
    expected = reference(ids, (ids != 0).long()).last_hidden_state
    actual = model(ids, (ids != 0).long()).last_hidden_state
    print("max error", ((actual - expected).abs() / (1 + expected.abs())).max().item())
    """
    result = _run(prelude + "\n" + textwrap.dedent(program.format(folder=str(tmp_path))))
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 4, 64])" in result.stdout
    tolerance = ENCODER_TOLERANCES[(torch.float32, "interpreter")]
    assert float(result.stdout.split("max error")[1]) <= tolerance, result.stdout


def _add_one(x):
    return x + 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen on CPU-only machines")
def test_compiled_library_functions_are_redecorated_and_not_on_a_gpu_machine(monkeypatch):
    """A stand-in for a Triton library module imported without the interpreter: one compiled-kernel
    function under two names. It is switched once, to one interpreted function; never where a GPU is."""
    import types

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from fastbert.kernels._runtime import interpret_imported_triton

    compiled = JITFunction(_add_one)
    library = types.ModuleType("triton.language.stand_in")
    library.add_one = library.alias = compiled
    monkeypatch.setitem(sys.modules, "triton.language.stand_in", library)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 .* or use backend='torch' on CPU"):
        interpret_imported_triton()
    assert library.add_one is compiled
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "triton.language.stand_in", library)
    interpret_imported_triton()
    assert isinstance(library.add_one, InterpretedFunction) and library.alias is library.add_one
    assert library.add_one.fn is _add_one
    interpret_imported_triton()  # nothing left to switch: a no-op


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen on CPU-only machines")
def test_the_real_minilm_runs_on_the_triton_backend_after_triton_was_imported(minilm_path):
    """The import order of a sentence-transformers user: triton first (compiled mode), then fastbert."""
    program = f"""
    import triton
    import torch
    import fastbert
    model = fastbert.FastBertModel.from_pretrained({str(minilm_path)!r}, backend="triton", device="cpu")
    reference = fastbert.FastBertModel.from_pretrained({str(minilm_path)!r}, backend="torch", device="cpu")
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]])
    mask = (ids != 0).long()
    expected = reference(ids, mask).last_hidden_state
    actual = model(ids, mask).last_hidden_state
    print(tuple(actual.shape), "max error", ((actual - expected).abs() / (1 + expected.abs())).max().item())
    """
    result = _run(program)
    assert result.returncode == 0, result.stderr
    assert "(2, 5, 384)" in result.stdout
    tolerance = ENCODER_TOLERANCES[(torch.float32, "interpreter")]
    assert float(result.stdout.split("max error")[1]) <= tolerance, result.stdout


def test_import_fastbert_and_the_torch_backend_need_no_triton(tmp_path):
    """triton is a Linux-only dependency: with it unimportable, fastbert imports and the torch backend runs,
    and fastbert.kernels is never imported."""
    random_bert(tmp_path)
    program = f"""
    import sys
    sys.modules["triton"] = None  # any `import triton` now raises ImportError
    import torch
    from fastbert import FastBertModel
    model = FastBertModel.from_pretrained({str(tmp_path)!r}, device="cpu", backend="torch")
    ids = torch.tensor([[5, 6, 7, 0]])
    print(model(ids, (ids != 0).long()).last_hidden_state.shape, "fastbert.kernels" in sys.modules)
    """
    result = _run(program)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 4, 64]) False" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen on CPU-only machines")
def test_kernels_compiled_for_the_gpu_refuse_cpu_tensors_with_the_way_out(tmp_path):
    """TRITON_INTERPRET=0 set by the user wins, even without a GPU: the triton backend on CPU then says
    what to do instead of failing inside Triton."""
    random_bert(tmp_path)
    result = _run(PROGRAM.format(folder=str(tmp_path)), TRITON_INTERPRET="0")
    assert result.returncode != 0
    assert "the triton backend on CPU needs Triton's interpreter" in result.stderr
    assert "backend='torch'" in result.stderr


def test_interpreted_kernels_refuse_a_cuda_device(monkeypatch):
    from fastbert.engine import triton_ops

    monkeypatch.setattr(triton_ops.kernels, "is_interpreter", lambda: True)
    with pytest.raises(RuntimeError, match="cannot run CUDA tensors: unset TRITON_INTERPRET"):
        triton_ops.check_kernel_mode("cuda")
    with pytest.raises(ValueError, match="device meta is not supported by the triton backend"):
        triton_ops.check_kernel_mode("meta")
