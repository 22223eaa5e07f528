"""The host's share of a forward in steady state: pinned staging buffers are reused, never allocated per
call, and a graph replay reads nothing back from the device beyond the one validation read."""

import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastbert import FastBertModel
from fastbert.engine import staging
from fastbert.engine.graphs import GraphCache
from fastbert.engine.staging import Staging
from tests.bert_factory import random_batch, random_bert
from tests.engine.helpers import EagerReplay, counting_launcher


class FakeEvent:
    """A CUDA event stand-in: query() says whether the copy recorded before it has finished."""

    def __init__(self):
        self.done, self.waited = False, False

    def record(self):
        pass

    def query(self):
        return self.done

    def synchronize(self):
        self.waited = self.done = True


def _staging(ring_size=3):
    events = []

    def new_event():
        events.append(FakeEvent())
        return events[-1]

    return Staging(pin_memory=False, new_event=new_event, ring_size=ring_size), events


def test_staging_reuses_its_buffers_once_their_copies_are_done():
    stage, events = _staging()
    for step in range(50):
        values = list(range(step % 7 + 1))
        out = stage.upload(values, "cpu", torch.int32)
        assert out.tolist() == values and out.dtype == torch.int32
        events[-1].done = True  # the GPU finished that copy
    assert stage.allocations == 1 and len(stage.slots) == 1


def test_staging_never_refills_a_buffer_a_queued_copy_still_reads():
    stage, events = _staging(ring_size=3)
    outs = [stage.upload(torch.full((4,), float(i)), "cpu") for i in range(3)]
    assert stage.allocations == 3  # each copy still in flight: three buffers
    assert all(not e.waited for e in events)
    fourth = stage.upload(torch.full((4,), 3.0), "cpu")  # ring full: waits for the oldest copy, reuses it
    assert events[0].waited and stage.allocations == 3
    assert [o[0].item() for o in outs + [fourth]] == [0.0, 1.0, 2.0, 3.0]


def test_staging_grows_a_buffer_for_a_larger_upload_only():
    stage, events = _staging()
    stage.upload(torch.zeros(10, dtype=torch.int64), "cpu")
    events[-1].done = True
    stage.upload(torch.zeros(5000, dtype=torch.int64), "cpu")  # 40 KB > the first 4 KB buffer
    events[-1].done = True
    assert stage.allocations == 2
    for n in (10, 5000, 300):
        stage.upload(torch.zeros(n, dtype=torch.int64), "cpu")
        events[-1].done = True
    assert stage.allocations == 2


def test_uploads_to_a_gpu_go_through_the_staging_ring(monkeypatch):
    """packing's moves to CUDA and the graph's cu_seqlens refill both use staging.upload (checked without a
    GPU by standing in for it)."""
    from fastbert.engine import packing

    calls = []
    monkeypatch.setattr(staging, "upload", lambda values, device, dtype=None, out=None: calls.append(
        (type(values).__name__, str(device), out)) or values)
    packing._move(torch.arange(5), torch.device("cuda", 0))
    target = types.SimpleNamespace(device=torch.device("cuda", 0))
    captured = types.SimpleNamespace(inputs=(torch.zeros(8, dtype=torch.long),) * 3, cu_seqlens=target)
    shape = types.SimpleNamespace(cu_seqlens=lambda offsets: [0, 3, 8])
    fake_packing = types.SimpleNamespace(num_tokens=3, offsets=[0, 3])
    GraphCache._load(captured, shape, fake_packing, *(torch.ones(3, dtype=torch.long),) * 3)
    assert calls == [("Tensor", "cuda:0", None), ("list", "cuda:0", target)]


class _HostReads(TorchDispatchMode):
    """Counts the aten ops that make the host wait for the device (a read of a device value), outside
    kernel launchers (Triton's interpreter reads its CPU tensors, as a GPU launch never does)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "item"}

    def __init__(self):
        super().__init__()
        self.reads, self.events, self.inside_launcher = [], [], False  # events: launches (tests.engine.test_launches)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_launcher and func.overloadpacket.__name__ in self.SYNCING:
            self.reads.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("padded", [False, True])
def test_a_replayed_forward_reads_the_device_once(tmp_path, monkeypatch, padded):
    """Steady state (bucket captured, replaying): one host read per call, the validation statistics
    (lengths, id ranges) that padding removal and the checks need; none in the graph path itself."""
    random_bert(tmp_path, num_hidden_layers=1, hidden_size=64, num_attention_heads=2)
    model = FastBertModel.from_pretrained(tmp_path, device="cpu", backend="triton", gemm="triton")
    model._graphs = GraphCache(model._encode_packed, model._encode_tokens, model.device, runner=EagerReplay())
    recorder = _HostReads()
    tolist_calls = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (tolist_calls.append(self.shape), real_tolist(self))[1])
    kernels = model.ops.kernels

    class Quiet:  # kernel launches, with the recorder paused inside them
        pass

    quiet = Quiet()
    for name in ("embeddings", "linear", "attention", "layer_norm"):
        setattr(quiet, name, counting_launcher(recorder, name, getattr(kernels, name)))
    model.ops.kernels = quiet
    model.ops.gemm.candidates["triton"].fn = quiet.linear
    lengths = [7, 3, 5] if padded else [7, 7, 7]
    batch = random_batch(211, lengths, seq_len=7)
    for _ in range(2):  # eager, then warm-up + capture
        model(*batch)
    assert len(model._graphs.graphs) == 1
    tolist_calls.clear()
    with recorder:
        model(*batch)
    assert len(tolist_calls) == 1, f"host reads of tensors: {tolist_calls}"
    assert recorder.reads == [], f"ops that wait for the device: {recorder.reads}"
