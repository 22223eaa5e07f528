"""Choosing Triton's interpreter for the triton backend on CPU happens at first use, and fails clearly
where it cannot work."""

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


def _run(code):
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
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
    # without TRITON_INTERPRET (sentence-transformers imports it): fastbert decorates them again.
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

    from fastbert.engine.backends import interpret_imported_triton

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
