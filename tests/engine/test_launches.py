"""The layer loop of the triton backend is kernel launches and views, nothing else."""

import functools

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from tests.bert_factory import load_fastbert, random_batch, random_bert
from tests.engine.helpers import counting_launcher

# Metadata-only aten ops: they create views and launch nothing.
VIEW_OPS = {"view", "_unsafe_view", "unbind", "select", "slice", "as_strided", "alias", "detach"}


class _Recorder(TorchDispatchMode):
    """Records aten ops issued outside kernel launchers, in order with the launches themselves."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.inside_launcher = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_launcher:
            self.events.append(("op", func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layers", [1, 3])
def test_at_most_seven_launches_per_layer_and_no_other_ops(tmp_path, layers):
    """7 launches per layer on CPU: QKV, attention, attention-out (+ residual), LayerNorm, FFN-in (+ GELU),
    FFN-out (+ residual), LayerNorm. The residual adds ride in the GEMM epilogues, so neither LayerNorm
    reads a second tensor. (On a GPU a GEMM at a few hundred tokens may add a split-K reduction launch
    inside its launcher; the interpreter's launcher counts as one.)"""
    random_bert(tmp_path, num_hidden_layers=layers)
    # gemm="triton": on a GPU, "auto" would time cuBLAS inside the recorder and may run it instead.
    model = load_fastbert(tmp_path, "triton", cuda_graphs=False, gemm="triton")
    recorder = _Recorder()
    kernels = model.model.ops.kernels

    class CountingKernels:
        pass

    counting = CountingKernels()
    residuals = []  # per launch: whether it was given a residual

    def noting_residual(launcher):
        def launch(*args, **kwargs):
            residuals.append(kwargs.get("residual") is not None)
            return launcher(*args, **kwargs)

        return launch

    for name in ("embeddings", "linear", "attention", "layer_norm"):
        setattr(counting, name, noting_residual(counting_launcher(recorder, name, getattr(kernels, name))))
    model.model.ops.kernels = counting
    model.model.ops.gemm.candidates["triton"].fn = counting.linear  # the picker's handle on the kernel
    ids, mask, types = random_batch(211, [5, 9, 2], seq_len=9)
    with recorder:
        model(ids, mask, types)

    launches = [i for i, (kind, _) in enumerate(recorder.events) if kind == "launch"]
    assert recorder.events[launches[0]] == ("launch", "embeddings")
    layer_events = recorder.events[launches[0] + 1: launches[-1] + 1]
    layer_launches = [name for kind, name in layer_events if kind == "launch"]
    assert len(layer_launches) == 7 * layers
    assert layer_launches[:7] == ["linear", "attention", "linear", "layer_norm", "linear", "linear", "layer_norm"]
    first_layer = residuals[1:8]  # after the embeddings
    assert first_layer == [False, False, True, False, False, True, False]
    other_ops = {name for kind, name in layer_events if kind == "op"} - VIEW_OPS
    assert not other_ops, f"the layer loop issued tensor ops besides kernel launches: {other_ops}"


def test_encoder_skips_the_launchers_data_checks(tmp_path):
    """The encoder validated ids and built cu_seqlens itself: its launches pass check_indices=False, so the
    launchers do not read ids or cu_seqlens back to the host (a device sync) on every layer."""
    random_bert(tmp_path, num_hidden_layers=2)
    model = load_fastbert(tmp_path, "triton", cuda_graphs=False, gemm="triton")
    kernels = model.model.ops.kernels
    calls = []

    class RecordingKernels:
        def __getattr__(self, name):
            launcher = getattr(kernels, name)

            def record(*args, **kwargs):
                calls.append((name, kwargs.get("check_indices")))
                return launcher(*args, **kwargs)

            return record

    model.model.ops.kernels = RecordingKernels()
    ids, mask, types = random_batch(211, [5, 9, 2], seq_len=9)
    model(ids, mask, types)
    checked = [(name, check) for name, check in calls if name in ("embeddings", "attention")]
    assert checked == [("embeddings", False)] + [("attention", False)] * 2


@pytest.mark.slow
def test_mpnet_layers_launch_seven_kernels_with_the_one_bias_table(tmp_path):
    """MPNet's relative-position bias costs no launch: every attention launch reads the table built at load
    (needs the attention kernel's position_bias, issue #17)."""
    from tests.bert_factory import random_hf_model

    random_hf_model("MPNetModel", vocab_size=99, hidden_size=96, num_attention_heads=3, num_hidden_layers=2,
                    intermediate_size=37, max_position_embeddings=40, pad_token_id=1).save_pretrained(tmp_path)
    model = load_fastbert(tmp_path, "triton", cuda_graphs=False, gemm="triton")
    recorder, kernels, biases = _Recorder(), model.model.ops.kernels, []

    class CountingKernels:
        pass

    counting = CountingKernels()
    for name in ("embeddings", "linear", "attention", "layer_norm"):
        setattr(counting, name, counting_launcher(recorder, name, getattr(kernels, name)))
    attention = counting.attention

    def noting_bias(*args, **kwargs):
        biases.append(kwargs.get("position_bias"))
        return attention(*args, **kwargs)

    counting.attention = noting_bias
    model.model.ops.kernels = counting
    model.model.ops.gemm.candidates["triton"].fn = counting.linear
    ids, mask, _ = random_batch(99, [5, 9, 2], seq_len=9, pad_token_id=1)
    with recorder:
        model(ids, mask)
    launches = [i for i, (kind, _) in enumerate(recorder.events) if kind == "launch"]
    layer_events = recorder.events[launches[0] + 1: launches[-1] + 1]
    assert [name for kind, name in layer_events if kind == "launch"] == [
        "linear", "attention", "linear", "layer_norm", "linear", "linear", "layer_norm"] * 2
    table = model.model.weights.position_bias
    assert len(biases) == 2 and all(bias is table for bias in biases)
    other_ops = {name for kind, name in layer_events if kind == "op"} - VIEW_OPS
    assert not other_ops, f"the layer loop issued tensor ops besides kernel launches: {other_ops}"


@pytest.mark.slow
def test_modernbert_launches_per_layer(tmp_path):
    """ModernBERT on the triton backend: 6 launches per layer (layer 0: 5, no LayerNorm before attention):
    LayerNorm, QKV, attention (rotary and window inside), attention-out (+ residual), LayerNorm, GeGLU FFN-in,
    FFN-out (+ residual); the final LayerNorm once; nothing else between the launches."""
    from tests.modernbert_factory import modernbert_batch, random_modernbert

    random_modernbert().save_pretrained(tmp_path)
    model = load_fastbert(tmp_path, "triton", cuda_graphs=False, gemm="triton")
    recorder = _Recorder()
    kernels = model.model.ops.kernels

    class CountingKernels:
        pass

    counting = CountingKernels()
    for name in ("embeddings", "linear", "attention", "layer_norm"):
        setattr(counting, name, counting_launcher(recorder, name, getattr(kernels, name)))
    model.model.ops.kernels = counting
    model.model.ops.gemm.candidates["triton"].fn = counting.linear
    model.model.ops.gemm.glu_candidates["triton"].fn = functools.partial(counting.linear, glu=True)  # GeGLU
    ids, mask = modernbert_batch()
    with recorder:
        model(ids, mask)

    launches = [i for i, (kind, _) in enumerate(recorder.events) if kind == "launch"]
    assert recorder.events[launches[0]] == ("launch", "embeddings")
    layer_events = recorder.events[launches[0] + 1: launches[-1] + 1]
    names = [name for kind, name in layer_events if kind == "launch"]
    first = ["linear", "attention", "linear", "layer_norm", "linear", "linear"]
    assert names == first + ["layer_norm", *first] * 3 + ["layer_norm"]
    other_ops = {name for kind, name in layer_events if kind == "op"} - VIEW_OPS
    assert not other_ops, f"the layer loop issued tensor ops besides kernel launches: {other_ops}"
