"""encode on several worker processes (fastbert/workers.py): two CPU workers stand in for two GPUs.

Starting a worker costs a process with torch and the model (seconds on a small CPU): one pool serves
most tests; the tests that break or refuse a pool start one worker of their own."""

import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch

import fastbert
from fastbert.parallel.pool import EncodePool, RemoteTraceback, WorkerError, parse_devices
from tests.tolerances import BATCHING_ATOL, ENCODER_TOLERANCES, batching_error

# Ragged on purpose: empty, one word, truncated at max_seq_length, and lengths shuffled so that every
# chunk mixes short and long texts and the workers' length sorting must be undone.
TEXTS = [("word " * ((7 * i) % 31)) + f"text {i}" for i in range(27)] + ["", "long " * 300, "Ça coûte 🍕"]


@pytest.fixture(scope="module")
def model(minilm_path):
    return fastbert.from_pretrained(minilm_path, device="cpu", dtype=torch.float32, backend="torch")


@pytest.fixture(scope="module")
def pool(model):
    # chunk_size 5: ten chunks, so both workers take several and finish out of order.
    with model.start_pool(["cpu", "cpu"], chunk_size=5) as pool:
        yield pool
    assert not pool._processes[0].is_alive()


def fastbert_workers():
    return [child for child in multiprocessing.active_children() if child.name.startswith("fastbert-worker")]


def assert_same(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert batching_error(actual, expected) <= BATCHING_ATOL


def test_pool_matches_single_process_in_input_order(model, pool):
    assert pool.workers == ["cpu, torch, float32"] * 2
    assert_same(pool.encode(TEXTS), model.encode(TEXTS))
    options = dict(pooling="cls", normalize=False, max_length=16, batch_size=3)
    assert_same(pool.encode(TEXTS[:11], **options), model.encode(TEXTS[:11], **options))


def test_pool_keeps_encode_shapes(model, pool):
    assert_same(pool.encode("one text"), model.encode("one text"))
    assert_same(pool.encode(text for text in TEXTS[:13]), model.encode(TEXTS[:13]))  # any iterable
    assert pool.encode(iter([])).shape == (0, 384)
    assert pool.encode([]).shape == model.encode([]).shape == (0, 384)
    assert_same(model.encode(TEXTS[:7], pool=pool), model.encode(TEXTS[:7]))


def test_encode_chunks_streams_in_order(model, pool):
    chunks = (TEXTS[start:start + 4] for start in range(0, 24, 4))
    results = list(pool.encode_chunks(chunks))
    assert len(results) == 6
    assert_same(np.concatenate(results), model.encode(TEXTS[:24]))
    # A consumer that stops early abandons the chunks in flight; the next call is not confused by them.
    for _ in pool.encode_chunks([TEXTS[:5]] * 8):
        break
    assert_same(pool.encode(TEXTS[20:30]), model.encode(TEXTS[20:30]))


def test_worker_error_is_raised_in_parent_and_pool_survives(model, pool):
    with pytest.raises(ValueError, match="max_tokens") as caught:
        pool.encode(TEXTS, max_tokens=0)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "fastbert worker" in str(caught.value.__cause__)
    bad = TEXTS[:12] + [42] + TEXTS[12:20]
    with pytest.raises(TypeError, match="must be a string") as caught:
        pool.encode(bad)
    assert "while encoding texts[10:15]" in str(caught.value.__cause__)
    assert_same(pool.encode(TEXTS[:9]), model.encode(TEXTS[:9]))


def test_one_call_pool_via_devices_leaves_no_process(model):
    before = len(fastbert_workers())
    assert_same(model.encode(TEXTS[:10], devices=["cpu"]), model.encode(TEXTS[:10]))
    assert len(fastbert_workers()) == before


POSIX = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@POSIX
def test_dead_worker_fails_the_call_and_closes_the_pool(minilm_path):
    pool = EncodePool(minilm_path, ["cpu"], backend="torch")
    process = pool._processes[0]
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match=r"worker 0 on cpu died \(killed by SIGKILL"):
        pool.encode(TEXTS)
    assert pool.closed and not process.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        pool.encode(TEXTS)
    pool.close()  # idempotent


@POSIX
def test_silent_worker_times_out_and_is_stopped(minilm_path):
    pool = EncodePool(minilm_path, ["cpu"], backend="torch", timeout=2)
    process = pool._processes[0]
    os.kill(process.pid, signal.SIGSTOP)  # alive but hung: only the timeout can tell
    with pytest.raises(TimeoutError, match="no reply from the fastbert workers in 2 s"):
        pool.encode(TEXTS)
    assert pool.closed and not process.is_alive()


def test_load_failure_is_raised_in_parent(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    before = len(fastbert_workers())
    with pytest.raises(Exception, match="config.json|JSON|Expecting") as caught:
        EncodePool(tmp_path, ["cpu"])
    assert "while loading the model" in str(caught.value.__cause__)
    assert len(fastbert_workers()) == before


@pytest.mark.parametrize("devices, error, match", [
    ("cuda:0", TypeError, "single device"),
    (torch.device("cpu"), TypeError, "single device"),
    (None, TypeError, "list of devices"),
    ([], ValueError, "empty"),
    (["cpu", "tpu"], ValueError, r"devices\[1\]"),
    (["cpu", 3.5], ValueError, r"devices\[1\]"),
    pytest.param(["cuda:0"], ValueError, "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                                reason="a GPU is present")),
])
def test_bad_devices(devices, error, match):
    with pytest.raises(error, match=match):
        parse_devices(devices)


def test_bad_pool_arguments(model, pool, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        model.encode(["a"], devices=["cpu"], pool=pool)
    with pytest.raises(TypeError, match="EncodePool"):
        model.encode(["a"], pool="cpu")
    with pytest.raises(TypeError, match="texts must be"):
        pool.encode(None)
    with pytest.raises(ValueError, match="stats= is not collected"):
        pool.encode(["a"], stats=object())
    with pytest.raises(ValueError, match="chunk_size"):
        EncodePool(model.path, ["cpu"], chunk_size=0)
    with pytest.raises(FileNotFoundError):
        EncodePool(tmp_path / "missing", ["cpu"])


def test_cli_devices_matches_python_api(tmp_path, model, capsys):
    from fastbert.cli.main import main

    texts = [text for text in TEXTS[:9] if text]
    out, before = tmp_path / "out.npy", len(fastbert_workers())
    assert main(["encode", *texts, "--devices", "cpu,cpu", "--backend", "torch", "--model", str(model.path),
                 "--output", str(out)]) == 0
    assert "workers cpu, torch, float32; cpu, torch, float32" in capsys.readouterr().err
    assert_same(np.load(out), model.encode(texts))
    assert len(fastbert_workers()) == before


@pytest.mark.parametrize("options, message", [
    (["--devices", "cpu,cpu", "--device", "cpu"], "not both"),
    (["--devices", "cpu,,cpu"], "separated by commas"),
    (["--devices", "cpu,tpu"], "--device must be cpu, cuda or cuda:N"),
])
def test_cli_bad_devices(model, options, message, capsys):
    from fastbert.cli.main import main

    assert main(["encode", "a text", "--model", str(model.path), *options]) == 2
    assert message in capsys.readouterr().err


def test_progress_bar_is_the_parents(model, pool, capsys):
    assert_same(pool.encode(TEXTS[:12], show_progress_bar=True), model.encode(TEXTS[:12]))
    err = capsys.readouterr().err
    assert err.count("12/12") >= 1 and "encode" in err


@pytest.mark.gpu
def test_gpu_workers_match_single_process(minilm_path):
    # Every GPU of the machine, or two workers sharing the one GPU: CUDA in spawned processes, set_device.
    devices = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    devices = devices if len(devices) > 1 else devices * 2
    model = fastbert.from_pretrained(minilm_path, device="cuda:0", dtype=torch.float16)
    expected = model.encode(TEXTS)
    with model.start_pool(devices, chunk_size=7) as gpu_pool:
        assert all(", triton, float16" in worker for worker in gpu_pool.workers)
        actual = gpu_pool.encode(TEXTS)
    # Other batches mean other GEMM tiles and fp16 roundings: the encoder's fp16 bound, on unit vectors.
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= ENCODER_TOLERANCES[(torch.float16, "cuda")]


def test_encode_defaults_apply_unless_named(model, pool, monkeypatch):
    # for_model carries a truncate_dim given to fastbert.from_pretrained this way; normalize stands in here.
    monkeypatch.setattr(pool, "encode_defaults", {"normalize": False})
    assert_same(pool.encode(TEXTS[:5]), model.encode(TEXTS[:5], normalize=False))
    assert_same(pool.encode(TEXTS[:5], normalize=True), model.encode(TEXTS[:5], normalize=True))
