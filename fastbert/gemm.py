"""Which GEMM runs each projection: fastbert's Triton kernel, or cuBLAS, measured per shape.

On an H200 (benchmarks/results/nvidia-h200) the Triton GEMM reaches 56-69% of cuBLAS on BERT's plain
projections but beats cuBLAS + a separate GELU kernel on the FFN-in projection, where its fused epilogue
saves a round trip through memory. Neither wins everywhere, and the winner depends on the GPU, dtype and
token count, so in "auto" mode each GEMM shape is timed both ways on its first use and the faster one is
kept, the way an autotuner picks tiles. Both paths compute in fp32 accumulators and round once per
kernel; the cuBLAS path rounds once more, between the GEMM and the activation, exactly as transformers
does, so its numbers match transformers at least as closely.

Timing happens eagerly, on the first call with a new shape; never while a CUDA graph is being captured
(a shape first seen during capture runs the Triton kernel and is timed at its next eager call)."""

import torch
import torch.nn.functional as F

GEMMS = ("auto", "triton", "cublas")

_CUBLAS_ACTIVATIONS = {
    None: lambda y: y,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "relu": lambda y: y.relu_(),
}


def cublas_linear(x, weight, bias, activation=None):
    """activation(x @ weight.T + bias) through torch: cuBLAS(Lt) with the bias fused, the activation a
    second kernel."""
    return _CUBLAS_ACTIVATIONS[activation](F.linear(x, weight, bias))


class GemmPicker:
    """linear(x, weight, bias, activation) that runs the faster of two implementations per shape.

    Shapes are keyed like the Triton autotuner keys its tiles: tokens rounded up to a power of two (a
    varlen batch changes M every call), N, K, dtype, bias and activation."""

    def __init__(self, triton_linear, mode="auto", repeats=5):
        if mode not in GEMMS:
            raise ValueError(f"gemm must be one of {GEMMS}, got {mode!r}")
        self.triton_linear = triton_linear
        self.mode = mode
        self.repeats = repeats
        self.choices = {}  # shape key -> "triton" or "cublas"
        self.timings = {}  # shape key -> {"triton": seconds, "cublas": seconds}, for reports

    def __call__(self, x, weight, bias, activation=None):
        return self._implementation(self.choose(x, weight, bias, activation))(x, weight, bias, activation)

    def choose(self, x, weight, bias, activation):
        """Which implementation serves this call: fixed by the mode, or measured once per shape."""
        if self.mode != "auto" or x.device.type != "cuda":
            # cuBLAS is a CUDA library; on CPU (Triton's interpreter) the kernel under test always runs.
            return "cublas" if self.mode == "cublas" and x.device.type == "cuda" else "triton"
        key = self._key(x, weight, bias, activation)
        choice = self.choices.get(key)
        if choice is None:
            if torch.cuda.is_current_stream_capturing():
                return "triton"
            self.timings[key] = {name: self._time(name, x, weight, bias, activation) for name in ("triton", "cublas")}
            choice = min(self.timings[key], key=self.timings[key].get)
            self.choices[key] = choice
        return choice

    def choices_for(self, tokens):
        """{"NxK[+activation]": "triton" or "cublas"} for the shapes measured at this token count."""
        bucket = _bucket(tokens)
        return {f"{n}x{k}" + (f"+{act}" if act else ""): choice
                for (b, n, k, _, _, act), choice in self.choices.items() if b == bucket}

    @staticmethod
    def _key(x, weight, bias, activation):
        return (_bucket(x.shape[0]), weight.shape[0], weight.shape[1], x.dtype, bias is not None, activation)

    def _implementation(self, name):
        return self.triton_linear if name == "triton" else cublas_linear

    def _time(self, name, x, weight, bias, activation):
        """Device seconds of one call: warm-up calls first (the first Triton call autotunes its tiles), then
        replays of a CUDA graph of `repeats` calls, as the encoder runs them. Timing eager calls instead
        would charge Triton's host launch cost, which is larger than many of these GEMMs and which the
        encoder's graphs never pay. A shape that cannot be captured is charged infinity (never chosen)."""
        fn = self._implementation(name)
        try:
            for _ in range(3):
                fn(x, weight, bias, activation)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(self.repeats):
                    fn(x, weight, bias, activation)
            graph.replay()  # once untimed: the first replay uploads the graph
            samples = []
            for _ in range(3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3 / self.repeats)
        except RuntimeError:
            return float("inf")
        return sorted(samples)[1]


def _bucket(tokens):
    """Token counts rounded up to a power of two, as the Triton autotuner buckets them."""
    return 1 << max(tokens - 1, 0).bit_length()
