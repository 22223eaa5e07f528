"""`fastbert serve`'s command line without starting a server: its options, its errors, and that importing
fastbert (or fastbert.serve) loads neither fastapi nor torch."""

import subprocess
import sys

import pytest

from fastbert.cli.main import build_parser, main
from fastbert.cli.serve import MISSING_EXTRA

from .conftest import ROOT


def test_options_and_defaults():
    args = build_parser().parse_args(["serve", "--model", "a", "--served-name", "x", "--model", "b"])
    assert args.model == ["a", "b"] and args.served_name == ["x"]
    assert (args.host, args.port, args.max_batch_tokens, args.auto_truncate) == ("127.0.0.1", 8080, 16384, True)
    assert build_parser().parse_args(["serve", "--no-auto-truncate"]).auto_truncate is False


def test_missing_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert main(["serve"]) == 2
    assert 'pip install "fastbert[serve]"' in capsys.readouterr().err
    assert "fastbert[serve]" in MISSING_EXTRA


@pytest.mark.parametrize("argv, message", [
    (["serve", "--model", "a", "--served-name", "x", "--served-name", "y"], "pair them in order"),
    (["serve", "--port", "70000", "--model", "a"], "--port"),
    (["serve", "--max-batch-tokens", "0"], "positive integer"),
])
def test_bad_command_lines_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_importing_fastbert_serve_is_light():
    code = ("import sys, fastbert, fastbert.serve, fastbert.serve.settings; "
            "assert 'fastapi' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)


def test_settings_are_checked():
    from fastbert.serve import ServedModelSpec, ServeSettings, build_app

    assert ServeSettings(devices="cpu, cpu").devices == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="twice"):
        build_app(["unused"], ServeSettings(devices="cpu,cpu"))
    for bad in ({"max_batch_tokens": 0}, {"payload_limit": True}, {"api_key": ""}, {"drain_seconds": 0}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)
    with pytest.raises(ValueError, match="kind"):
        ServedModelSpec("x", kind="nope")
    with pytest.raises(TypeError):
        build_app(["unused"], settings={"max_batch_tokens": 1})
