"""encode on several worker processes (fastbert.parallel.pool): two CPU workers stand in for two GPUs.

Starting a worker costs a process with torch and the model (seconds on a small CPU): one pool serves
most tests; the tests that break or refuse a pool start one worker of their own."""

import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch

import fastbert
from fastbert.checkpoint.tokenizer import UntokenizableTextError
from fastbert.parallel.devices import describe_runtimes, parse_devices
from fastbert.parallel.pool import EncodePool, RemoteTraceback, WorkerError
from fastbert.parallel.worker import pack_exception, unpack_exception
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
    assert_same(pool.encode(TEXTS[:9]), model.encode(TEXTS[:9]))


def test_bad_text_is_named_by_its_index_in_the_input(model, pool):
    # chunk_size 5: texts[12] is the third text of chunk texts[10:15]; the error counts from the input's start.
    with pytest.raises(TypeError, match=r"^texts\[12\] must be a string, got int$"):
        pool.encode(TEXTS[:12] + [42] + TEXTS[12:20])
    with pytest.raises(UntokenizableTextError, match=r"texts\[12\] \(a lone surrogate") as caught:
        pool.encode(TEXTS[:12] + ["bad \ud800 text"] + TEXTS[12:20])
    assert caught.value.indices == [12]
    assert "while encoding texts[10:15]" in str(caught.value.__cause__)
    assert_same(pool.encode(TEXTS[:9]), model.encode(TEXTS[:9]))


def test_stream_error_comes_after_the_chunks_before_it(model, pool):
    # What a single-device stream does: every chunk before the bad one is yielded, then its error is raised.
    chunks = [TEXTS[0:4], TEXTS[4:8], TEXTS[8:10] + ["bad \ud800"], TEXTS[12:16]]
    results = []
    with pytest.raises(UntokenizableTextError, match=r"texts\[2\]") as caught:
        for result in pool.encode_chunks(chunks):
            results.append(result)
    assert len(results) == 2 and "while encoding chunk 2" in str(caught.value.__cause__)
    assert_same(np.concatenate(results), model.encode(TEXTS[:8]))
    with pytest.raises(TypeError, match=r"chunk 1: texts\[0\] must be a string, got NoneType"):
        for result in pool.encode_chunks([TEXTS[0:4], [None]]):
            results.append(result)
    assert len(results) == 3


def test_exception_keeps_its_type_across_processes():
    # UntokenizableTextError's __init__ takes indices that its args do not hold: pickle alone cannot rebuild it.
    packed = pack_exception(UntokenizableTextError("cannot tokenize texts[3]", [3]))
    exception, summary, _ = unpack_exception(packed)
    assert type(exception) is UntokenizableTextError and exception.indices == [3]
    assert str(exception) == "cannot tokenize texts[3]" and summary.startswith("UntokenizableTextError: ")


class ShortList(list):
    """A list whose iteration stops before its len(): a view over a changing source can be like this."""

    def __iter__(self):
        return iter(self[:len(self) - 2])


class LongList(list):
    def __iter__(self):
        return iter(self[:] + self[:2])


@pytest.mark.parametrize("texts", [ShortList(TEXTS[:9]), LongList(TEXTS[:9])], ids=["short", "long"])
def test_sized_input_must_give_its_len(model, pool, texts):
    # Every path that sizes its result by len(): no uninitialised or missing rows, an error naming both counts.
    with pytest.raises(ValueError, match=r"texts has len\(\) 9 but its iteration gave (7|more than 9) texts"):
        model.encode(texts)
    with pytest.raises(ValueError, match=r"texts has len\(\) 9 but its iteration gave (11|7) texts"):
        pool.encode(texts)


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
    err = capsys.readouterr().err
    assert "(workers cpu x2, torch, float32; " in err and err.count("torch") == 1
    assert_same(np.load(out), model.encode(texts))
    assert len(fastbert_workers()) == before


@pytest.mark.parametrize("runtimes, summary", [
    ([("cpu", "torch", "float32")], "cpu, torch, float32"),
    ([("cuda:0", "triton", "float16"), ("cuda:1", "triton", "float16")], "cuda:0+cuda:1, triton, float16"),
    ([("cuda:0", "triton", "float16"), ("cpu", "torch", "float32"), ("cuda:0", "triton", "float16")],
     "cuda:0 x2, triton, float16 / cpu, torch, float32"),
])
def test_workers_summary_says_each_thing_once(runtimes, summary):
    assert describe_runtimes(runtimes) == summary


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
