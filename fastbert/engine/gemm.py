"""Which GEMM runs each projection: fastbert's Triton kernels or cuBLAS, measured per shape.

cuBLAS tends to win BERT's plain projections, while the Triton GEMM's fused epilogue saves a round trip
through memory where there is an activation to fuse (measured: benchmarks/results/<gpu>/REPORT.md); on
sm_90+ a TMA persistent kernel (fastbert/kernels/linear_persistent.py) competes too. Neither wins
everywhere, and the winner depends on the GPU, dtype and token count, so in "auto" mode every candidate is
timed on a shape's first use and the fastest is kept, the way an autotuner picks tiles. All compute in fp32
accumulators; the cuBLAS path rounds once more, between the GEMM and the activation, exactly as transformers
does, so its numbers match transformers at least as closely.

Decisions are made eagerly, on the first call with a new shape, and at the M the decision will serve: a
shape is keyed by its token bucket (tokens rounded up to a power of two) and timed on operands of the
bucket's full size, each candidate replayed until the timing is stable (_time). A CUDA graph is never
captured around an undecided shape: fastbert's graph cache runs one eager warm-up pass of the exact
batch it captures, which decides every shape first, and a shape first met during someone else's capture
is an error that says so, never a silent untimed pick."""

import functools
import math
import statistics
import warnings

import torch
import torch.nn.functional as F

from fastbert.checkpoint.activations import EPILOGUE_FUNCTIONS


def torch_linear(x, weight, bias, activation=None, residual=None):
    """activation(x @ weight.T + bias) + residual in PyTorch: on a GPU cuBLAS(Lt) with the bias fused, the
    activation and the residual add separate kernels (the "cublas" candidate); on a CPU the torch backend's
    GEMM. Rounded after each step, as transformers computes dense(x) + input_tensor."""
    out = EPILOGUE_FUNCTIONS[activation](F.linear(x, weight, bias))
    return out if residual is None else out.add_(residual)


def torch_glu_linear(x, weight, bias, activation=None, residual=None):
    """The gated projection in PyTorch (the "cublas" candidate with glu=True), as transformers' ModernBERT
    MLP computes it: input, gate = F.linear(x, weight, bias).chunk(2, -1); act(input) * gate. No residual."""
    if residual is not None:
        raise ValueError("residual must be None with glu=True")
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return EPILOGUE_FUNCTIONS[activation](value) * gate


class Candidate:
    """One GEMM implementation: fn(x, weight, bias, activation, residual=None), and supports(x, weight)."""

    def __init__(self, fn, supports=lambda x, weight: True):
        self.fn, self.supports = fn, supports


class GemmPicker:
    """linear(x, weight, bias, activation, residual) that runs the fastest of its candidates per shape.

    Candidates: "triton" (fastbert's kernel; the only one on CPU), "cublas" (CUDA), and any extra ones
    given (e.g. a Hopper-only kernel). Shapes are keyed like the Triton autotuner keys its tiles: tokens
    rounded up to a power of two (a varlen batch changes M every call), N, K, dtype, bias, activation and
    whether a residual is added (its cuBLAS candidate pays one more kernel, the fused Triton epilogue none).
    glu=True calls (a [2N, K] weight, act(first half) * second half) have candidates of their own: the Triton
    kernel with glu=True, and cuBLAS then chunk and multiply; extra candidates are not offered (the
    persistent kernel has no GLU epilogue).
    Before a Triton candidate is timed its output is checked against cuBLAS on the same operands: one
    that disagrees (a kernel bug only a real GPU shows) is never chosen, and a warning says so."""

    # Timing: at least MIN_REPLAY_S of GEMM calls per graph replay (small shapes take a few microseconds;
    # one replay of five would be as short as the event timer's own jitter), and the median of SAMPLES
    # replays.
    MIN_REPLAY_S = 200e-6
    MAX_REPEATS = 256
    SAMPLES = 7

    def __init__(self, triton_linear, mode="auto", repeats=5, extra=None):
        self.candidates = {"triton": Candidate(triton_linear), "cublas": Candidate(torch_linear), **(extra or {})}
        self.glu_candidates = {"triton": Candidate(functools.partial(triton_linear, glu=True)),
                               "cublas": Candidate(torch_glu_linear)}
        if mode != "auto" and mode not in self.candidates:
            raise ValueError(f"gemm must be one of {('auto', *self.candidates)}, got {mode!r}")
        self.mode = mode
        self.repeats = repeats  # calls per graph replay for the first, sizing measurement
        self.choices = {}  # shape key -> candidate name
        self.timings = {}  # shape key -> {candidate name: seconds}, for reports
        self.rejected = {}  # shape key -> candidates whose output disagreed with cuBLAS

    def __call__(self, x, weight, bias, activation=None, residual=None, glu=False):
        name = self.choose(x, weight, bias, activation, residual, glu)
        candidates = self._candidates(glu)
        if name not in ("triton", "cublas") and not candidates[name].supports(x, weight):
            name = "triton"  # chosen for this shape on operands it could address; these it cannot (alignment)
        return candidates[name].fn(x, weight, bias, activation, residual=residual)

    def _candidates(self, glu):
        return self.glu_candidates if glu else self.candidates

    def choose(self, x, weight, bias, activation, residual=None, glu=False):
        """Which implementation serves this call: fixed by the mode, or measured once per shape."""
        candidates = self._candidates(glu)
        if self.mode != "auto":
            fixed = candidates.get(self.mode)
            if fixed is None:
                return "triton"  # a mode with no GLU version (triton_persistent): fastbert's own kernel
            usable = fixed.supports(x, weight) and (self.mode != "cublas" or x.device.type == "cuda")
            return self.mode if usable else "triton"
        if x.device.type != "cuda":
            return "triton"  # cuBLAS is a CUDA library; on CPU (Triton's interpreter) the kernel under test runs
        key = self._key(x, weight, bias, activation, residual, glu)
        choice = self.choices.get(key)
        if choice is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    f"fastbert: the GEMM at {_describe(key)} was first met while a CUDA graph was being "
                    "captured, where it cannot be timed: run one eager call of the same shape before capturing "
                    "(FastBertModel's own graphs do), or fix the implementation with gemm='triton'/'cublas'")
            names = [name for name, c in candidates.items() if c.supports(x, weight)]
            rejected = {}
            for name in names:
                if name == "cublas":
                    continue
                try:
                    if not self._agrees(name, x, weight, bias, activation, residual, glu):
                        rejected[name] = "its output disagreed with cuBLAS"
                except Exception as error:  # noqa: BLE001 - a kernel that cannot run here must not fail the forward
                    rejected[name] = f"it failed: {error!r}"[:300]
            if rejected:
                self.rejected[key] = list(rejected)
                reasons = "; ".join(f"{name}: {why}" for name, why in rejected.items())
                warnings.warn(f"fastbert: GEMM candidates not used at {_describe(key)} ({reasons}); cuBLAS "
                              "or another candidate serves this shape (please report it)", stacklevel=3)
            # Timed at the bucket's full token count: the decision serves every M of the bucket, and the
            # largest is where a wrong pick costs most (the residual grows with x).
            operand = self.operand_at_bucket(x, key[0])
            grown = self.operand_at_bucket(residual, key[0]) if residual is not None else None
            self.timings[key] = {name: self._time(name, operand, weight, bias, activation, grown, glu)
                                 for name in names if name not in rejected}
            choice = min(self.timings[key], key=self.timings[key].get)
            self.choices[key] = choice
        return choice

    def choices_for(self, tokens):
        """{"NxK[+activation][+residual]": candidate name} for the shapes measured at this token count."""
        bucket = _bucket(tokens)
        return {_describe(key, tokens=False): choice for key, choice in self.choices.items() if key[0] == bucket}

    def timings_for(self, tokens):
        """{"NxK[+activation]": {candidate name: microseconds per call}} for the shapes measured at this
        token count (the numbers each decision of choices_for was made on)."""
        bucket = _bucket(tokens)
        return {_describe(key, tokens=False): {name: round(seconds * 1e6, 3) for name, seconds in timing.items()}
                for key, timing in self.timings.items() if key[0] == bucket}

    @staticmethod
    def operand_at_bucket(x, bucket):
        """x [M, K] grown to [bucket, K] by repeating its rows (real values: no zeros or junk that could
        time differently), or x itself when M is the bucket already."""
        rows = x.shape[0]
        if rows == bucket or rows == 0:
            return x
        return x.repeat(-(-bucket // rows), 1)[:bucket]

    @staticmethod
    def _key(x, weight, bias, activation, residual=None, glu=False):
        return (_bucket(x.shape[0]), weight.shape[0], weight.shape[1], x.dtype, bias is not None, activation,
                residual is not None, glu)

    def _implementation(self, name, glu=False):
        return self._candidates(glu)[name].fn

    def _agrees(self, name, x, weight, bias, activation, residual=None, glu=False):
        """Whether a candidate's output matches cuBLAS's within what rounding explains: relative error of
        the whole output under 2% for 16-bit types, 0.5% for fp32 (TF32 products). A wrong tile, a
        missed edge or a NaN is off by order one."""
        ours = self._implementation(name, glu)(x, weight, bias, activation, residual=residual).float()
        reference = self._candidates(glu)["cublas"].fn(x, weight, bias, activation, residual=residual).float()
        limit = 5e-3 if x.dtype == torch.float32 else 2e-2
        error = torch.linalg.vector_norm(ours - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-30)
        return bool(torch.isfinite(ours).all()) and float(error) <= limit

    def _time(self, name, x, weight, bias, activation, residual=None, glu=False):
        """Device seconds of one call: warm-up calls first (the first Triton call autotunes its tiles), then
        replays of a CUDA graph of calls, as the encoder runs them. Timing eager calls instead would charge
        Triton's host launch cost, which is larger than many of these GEMMs and which the encoder's graphs
        never pay. One replay of `repeats` calls sizes the graph that is timed: enough calls for
        MIN_REPLAY_S per replay, the median of SAMPLES replays. A shape that cannot be captured is charged
        infinity (never chosen)."""
        fn = self._implementation(name, glu)
        try:
            with torch.cuda.device(x.device):  # capture and events on the operands' GPU, not the current one
                for _ in range(3):
                    fn(x, weight, bias, activation, residual)
                args = (x, weight, bias, activation, residual)
                first = self._replays(fn, args, self.repeats, samples=1)
                calls = min(self.MAX_REPEATS, max(self.repeats, math.ceil(self.MIN_REPLAY_S / max(first, 1e-9) - 1e-6)))
                return self._replays(fn, args, calls, self.SAMPLES)
        except RuntimeError:
            return float("inf")

    @staticmethod
    def _replays(fn, args, calls, samples):
        """Median seconds per call over `samples` replays of a graph of `calls` calls."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn(*args)
        graph.replay()  # once untimed: the first replay uploads the graph
        times = []
        for _ in range(samples):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        return statistics.median(times)


def _describe(key, tokens=True):
    bucket, n, k, _, _, activation, residual, glu = key
    shape = f"{n}x{k}" + ("+glu" if glu else "") + (f"+{activation}" if activation else "")
    shape += "+residual" if residual else ""
    return f"tokens<={bucket} {shape}" if tokens else shape


def _bucket(tokens):
    """Token counts rounded up to a power of two, as the Triton autotuner buckets them."""
    return 1 << max(tokens - 1, 0).bit_length()
