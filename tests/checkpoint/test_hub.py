"""Hugging Face Hub ids ("org/name") resolve through huggingface_hub and its local cache. No test here
touches the network: the cache is laid out in a temporary folder, and "online" means an endpoint that
refuses connections."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fastbert
from fastbert.checkpoint.hub import hub_files, resolve_model_path
from tests.bert_factory import random_bert
from tests.tolerances import REBATCHED_ATOL

huggingface_hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache, repo_id, source):
    """`source`'s files in the Hugging Face cache layout: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for file in source.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch, minilm_path):
    """An empty Hugging Face cache in tmp_path, offline by default, and a small BERT checkpoint folder with
    a tokenizer, to place in it."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Relative names are looked up as folders first: run where no folder named like the hub id exists.
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "source"
    random_bert(source, vocab_size=30522, max_position_embeddings=64)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_path / name, source / name)
    return cache, source


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections: bound, so nothing else takes it, but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A loopback port that takes connections into its backlog and never answers a request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def go_online(monkeypatch, endpoint):
    """Online mode, with the Hub at `endpoint`."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)


def go_online_without_network(monkeypatch, closed_port):
    """Online mode, with the Hub at a loopback address that refuses every connection."""
    go_online(monkeypatch, f"http://127.0.0.1:{closed_port}")


def serve_file_list(monkeypatch, files):
    """The Hub's answer to the one metadata request, the repository's file list, as its JSON parses."""
    from huggingface_hub.hf_api import ModelInfo

    def model_info(self, repo_id, **kwargs):
        return ModelInfo(id=repo_id, siblings=[{"rfilename": name} for name in files])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


def test_hub_id_offline_loads_from_the_cache(hub):
    cache, source = hub
    snapshot = lay_out_cache(cache, "org/tiny-bert", source)
    assert resolve_model_path("org/tiny-bert") == snapshot
    model = fastbert.from_pretrained("org/tiny-bert", backend="torch", device="cpu")
    direct = fastbert.from_pretrained(source, backend="torch", device="cpu")
    texts = ["a sentence", "another one, a little longer"]
    assert np.array_equal(model.encode(texts), direct.encode(texts))


def test_online_but_unreachable_falls_back_to_the_cache(hub, monkeypatch, closed_port):
    cache, source = hub
    snapshot = lay_out_cache(cache, "org/tiny-bert", source)
    go_online_without_network(monkeypatch, closed_port)
    assert resolve_model_path("org/tiny-bert") == snapshot


def test_offline_and_not_cached_says_what_was_tried_and_how_to_fix_it(hub, tmp_path):
    cache, _ = hub
    with pytest.raises(FileNotFoundError) as caught:
        fastbert.from_pretrained("org/missing")
    message = str(caught.value)
    for part in (f"no local folder {tmp_path / 'org' / 'missing'}", "Hugging Face Hub model 'org/missing'",
                 f"not in the local Hugging Face cache {cache}", "HF_HUB_OFFLINE=1", "hf download org/missing",
                 "pass a local checkpoint folder"):
        assert part in message, message


# huggingface_hub retries a refused listing five times with back-off (1 + 2 + 4 + 8 + 8 s): a failure
# well inside that is one request, not retried.
AT_ONCE_S = 5


def test_online_unreachable_and_not_cached_fails_at_once_naming_the_network_error(hub, monkeypatch, tmp_path,
                                                                                 closed_port):
    cache, _ = hub
    go_online_without_network(monkeypatch, closed_port)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as caught:
        resolve_model_path("org/missing")
    assert time.monotonic() - start < AT_ONCE_S
    message = str(caught.value)
    for part in (f"no local folder {tmp_path / 'org' / 'missing'}", "could not be downloaded (ConnectError",
                 f"not in the local Hugging Face cache {cache}", "check the network connection"):
        assert part in message, message


def test_a_hub_that_never_answers_fails_within_the_metadata_timeout(hub, monkeypatch, silent_port):
    """HF_HUB_ETAG_TIMEOUT, huggingface_hub's own bound on a metadata request, bounds the wait (its
    session alone has no timeout)."""
    go_online(monkeypatch, f"http://127.0.0.1:{silent_port.getsockname()[1]}")
    monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="could not be downloaded .*Timeout"):
        resolve_model_path("org/missing")
    assert time.monotonic() - start < AT_ONCE_S


def test_offline_makes_no_request(hub, monkeypatch, silent_port):
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{silent_port.getsockname()[1]}")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_model_path("org/missing")
    with pytest.raises(BlockingIOError):  # no connection waits in the backlog: nothing tried the Hub
        silent_port.accept()


def test_cli_with_an_unreachable_hub_exits_2_at_once(tmp_path, closed_port):
    """The whole command, as a user runs it offline with an uncached id: one line, exit 2, no retries."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRITON_INTERPRET")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port}", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-m", "fastbert", "encode", "--model", "org/missing", "a text"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--model org/missing: no local folder" in proc.stderr and "ConnectError" in proc.stderr, proc.stderr
    # One line: none of huggingface_hub's "Retrying in 1s [Retry 1/5]" warnings (a wall-time bound on a
    # whole interpreter would measure the machine's load; the in-process cases above bound the time).
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_paths_and_names_that_cannot_be_hub_ids(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: /nowhere/at/all"):
        resolve_model_path("/nowhere/at/all")
    with pytest.raises(FileNotFoundError, match=r"model folder not found: a/b/c \(nor is 'a/b/c' a Hugging Face"):
        resolve_model_path("a/b/c")
    with pytest.raises(TypeError, match="folder path or a Hugging Face Hub id, got int"):
        resolve_model_path(3)
    # A local folder wins over a hub id of the same name.
    local = tmp_path / "org" / "tiny-bert"
    local.mkdir(parents=True)
    assert resolve_model_path("org/tiny-bert") == local.relative_to(tmp_path)


def test_a_cached_snapshot_without_config_is_named(hub):
    cache, source = hub
    (source / "config.json").unlink()
    lay_out_cache(cache, "org/no-config", source)
    with pytest.raises(FileNotFoundError, match="'org/no-config' .* has no config.json"):
        resolve_model_path("org/no-config")


def test_download_fetches_only_what_fastbert_reads(hub, monkeypatch, closed_port):
    """The online path's wiring, with huggingface_hub's two network calls replaced by the cache they fill."""
    cache, source = hub
    go_online_without_network(monkeypatch, closed_port)
    repo_files = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "tokenizer.json",
                  "vocab.txt", "onnx/model.onnx", "openvino/openvino_model.bin", "1_Pooling/config.json",
                  "2_Dense/config.json", "2_Dense/pytorch_model.bin", "modules.json", "README.md"]
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(lay_out_cache(cache, repo_id, source))

    serve_file_list(monkeypatch, repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_model_path("org/tiny-bert") == cache / "models--org--tiny-bert" / "snapshots" / COMMIT
    assert calls == [("org/tiny-bert", ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                        "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/pytorch_model.bin",
                                        "modules.json"])]


def test_a_sentence_transformers_repo_downloads_every_module_file(hub, monkeypatch, tmp_path, closed_port):
    """What the download keeps of a sentence-transformers repository is enough for its whole pipeline: the
    module configs, and a Dense's weights in its own folder (here pytorch_model.bin) beside the encoder's
    root model.safetensors. The fake download lays out only the files asked for."""
    pytest.importorskip("sentence_transformers")
    from safetensors.torch import load_file

    from tests.st_factory import TEXTS, save_pipeline, tiny_encoder

    cache, _ = hub
    source = save_pipeline(tmp_path / "st", tiny_encoder(tmp_path / "encoder"), dense=[dict(out_features=24)],
                           normalize=True, prompts={"query": "query: "}, default_prompt_name="query")
    dense = source / "2_Dense"
    torch.save(load_file(dense / "model.safetensors"), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    repo_files = sorted(str(f.relative_to(source)) for f in source.rglob("*") if f.is_file())
    noise = ["onnx/model.onnx", "openvino/openvino_model.bin", "2_Dense/tf_model.h5"]
    go_online_without_network(monkeypatch, closed_port)
    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.extend(allow_patterns)
        kept = tmp_path / "kept"
        for name in allow_patterns:
            (kept / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, kept / name)
        return str(lay_out_cache(cache, repo_id, kept))

    serve_file_list(monkeypatch, repo_files + noise)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = fastbert.from_pretrained("org/tiny-st", backend="torch", device="cpu")
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/pytorch_model.bin", "model.safetensors"):
        assert name in asked, asked
    assert not set(noise) & set(asked), asked
    direct = fastbert.from_pretrained(source, backend="torch", device="cpu")
    assert np.array_equal(model.encode(TEXTS), direct.encode(TEXTS))  # Dense, Normalize and the prompt included
    assert model.encode(TEXTS).shape == (len(TEXTS), 24)


def test_hub_files_prefers_safetensors_per_folder():
    files = ["config.json", "pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
             "sentencepiece.bpe.model", "merges.txt", "vocab.json", "flax_model.msgpack", "rust_model.ot"]
    assert hub_files(files) == ["config.json", "pytorch_model.bin", "pytorch_model-00001-of-00002.bin",
                                "pytorch_model.bin.index.json", "sentencepiece.bpe.model", "merges.txt", "vocab.json"]
    assert hub_files(["model.safetensors", "pytorch_model.bin"]) == ["model.safetensors"]


def test_cli_takes_a_hub_id(hub, capsys, tmp_path):
    from fastbert.cli.main import main

    cache, source = hub
    lay_out_cache(cache, "org/tiny-bert", source)
    out = tmp_path / "out.npy"
    code = main(["encode", "--model", "org/tiny-bert", "--backend", "torch", "--device", "cpu", "hello", "world",
                 "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    direct = fastbert.from_pretrained(source, backend="torch", device="cpu").encode(["hello", "world"])

    np.testing.assert_allclose(np.load(out), direct, rtol=0, atol=REBATCHED_ATOL)
    code = main(["verify", "--model", "org/missing"])
    err = capsys.readouterr().err
    assert code == 2 and "--model org/missing: no local folder" in err and "HF_HUB_OFFLINE=1" in err, err
    assert json.loads((source / "config.json").read_text())["model_type"] == "bert"
