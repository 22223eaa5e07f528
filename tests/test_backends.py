"""Choosing Triton's interpreter for the triton backend on CPU happens at first use, and fails clearly
where it cannot work."""

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.bert_factory import random_bert
from tests.kernels.compile_check import REPO_ROOT

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
def test_triton_imported_before_the_interpreter_is_refused_clearly(tmp_path):
    # Triton's own library functions (tl.sum, tl.cdiv) are decorated for the GPU when triton is imported
    # without TRITON_INTERPRET, and then cannot run inside interpreted kernels.
    random_bert(tmp_path)
    result = _run("import triton\n" + textwrap.dedent(PROGRAM.format(folder=str(tmp_path))))
    assert result.returncode != 0
    assert "must be switched on before triton is first imported" in result.stderr
    assert "backend='torch'" in result.stderr
