#!/usr/bin/env bash
# The one GPU script: on a CUDA machine with torch, triton, transformers, sentence-transformers, pytest,
# pytest-benchmark and matplotlib already installed (no network, fastbert not installed), run
#   1. the encoder tests on CUDA (graph replay, the GEMM picker, fastbert against transformers), then the
#      gpu-marked kernel tests (bf16, TF32, BERT-sized shapes, every autotune config)
#   2. the kernel benchmarks (quick sizes, fp16 then bf16, timed as CUDA-graph replays)
#   3. the encoder benchmarks (quick grid, fp16; every fastbert row carries its error against transformers)
#   4. the encoder profile (benchmarks/profile_encoder.py): wall time with and without CUDA graphs against
#      device time per kernel family, and the host cost of input packing, at 1x128, 32x128 and 32x128
#      with 50% padding (BERT-base and MiniLM shapes, fp16); a failing case is recorded, never fatal
#   5. the torch.compile(mode="max-autotune") baseline at batch 32 x seq 128 fp16, in its own process
#      and budget because compiling is slow: when it runs out, only this baseline is missing
#   6. the report
#   7. the rest of the test suite on the GPU (the kernels natively instead of interpreted, the encoder on
#      CUDA), with whatever is left of the time budget; the CPU-only compile checks are left to CI
# within about 9 minutes: every stage has a budget and a `timeout`; a stage that runs out is interrupted
# (SIGINT, so pytest still writes its JSON) and the next stage runs. Nothing is installed.
#
# Usage: bash benchmarks/gpu_check.sh [--out DIR]      (default DIR: benchmarks/results)
# Writes DIR/<device-slug>/: gpu_check.log kernels.json encoder.json profile.json PROFILE.md compile.json
# REPORT.md speedup.png padding.png tflops.png. Stage budgets (seconds) can be changed with
# FASTBERT_CHECK_{TESTS,KERNELS,ENCODER,PROFILE,COMPILE,REPORT}_S (0 skips a stage) and
# FASTBERT_CHECK_TOTAL_S (the whole run, which bounds stage 7); FASTBERT_CHECK_SIZE=tiny|quick|full picks
# the benchmark sizes (default quick; the profile has tiny and quick only, and runs quick for full).
set -uo pipefail
cd "$(dirname "$0")/.."

out_root=benchmarks/results
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out_root="$2"; shift 2 ;;
        --out=*) out_root="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (usage: gpu_check.sh [--out DIR])" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${FASTBERT_GIT_COMMIT:-}" ]; then
    FASTBERT_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)"
fi
export FASTBERT_GIT_COMMIT
tests_s="${FASTBERT_CHECK_TESTS_S:-100}"
kernels_s="${FASTBERT_CHECK_KERNELS_S:-100}"
encoder_s="${FASTBERT_CHECK_ENCODER_S:-130}"
profile_s="${FASTBERT_CHECK_PROFILE_S:-30}"
compile_s="${FASTBERT_CHECK_COMPILE_S:-110}"
report_s="${FASTBERT_CHECK_REPORT_S:-20}"
total_s="${FASTBERT_CHECK_TOTAL_S:-560}"
start_all=$SECONDS

slug="$($PY -c 'from benchmarks.timing import device_slug; print(device_slug())' 2>/dev/null)" || slug=unknown
[ -n "$slug" ] || slug=unknown
out="$out_root/$slug"
mkdir -p "$out"
log="$out/gpu_check.log"
rm -f "$log" "$out/kernels.json" "$out/encoder.json" "$out/compile.json" "$out/profile.json" "$out/PROFILE.md"
echo "gpu_check: device slug $slug, writing to $out" | tee "$log"

# Stages run inside `{ ...; } | tee` subshells: their exit codes travel through this file.
stages="$(mktemp)"
trap 'rm -f "$stages"' EXIT
# stage NAME BUDGET_S CMD...: run CMD under timeout (SIGINT first, SIGKILL 15 s later), report its time.
stage() {
    local name="$1" budget="$2" begin=$SECONDS rc
    shift 2
    echo "=== [$name] budget ${budget}s: $*"
    timeout -s INT -k 15 "$budget" "$@"
    rc=$?
    echo "=== [$name] exit $rc after $((SECONDS - begin))s$([ "$rc" -eq 124 ] && echo ' (budget reached)')"
    echo "$name $rc $((SECONDS - begin))" >>"$stages"
    return 0
}

# 1. gpu-marked tests ------------------------------------------------------------------------------------
rest_opts=(-q -rfE -p no:cacheprovider --durations=5 --ignore=tests/test_benchmarks_smoke.py)
encoder_tests=(tests/test_graphs.py tests/test_gemm.py tests/test_model.py tests/test_encode.py tests/test_patch.py)
{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    if [ "$tests_s" -gt 0 ]; then
        # First, all of the tests that only a GPU gives meaning to: graph replay, the GEMM picker, the whole
        # encoder against transformers (these files' unmarked tests run on CUDA too); then the gpu-marked
        # kernel tests, newest kernel first.
        stage tests-encoder "$((tests_s * 2 / 5))" $PY -m pytest "${encoder_tests[@]}" "${rest_opts[@]}"
        stage tests-gpu "$((tests_s * 3 / 5))" $PY -m pytest tests/kernels/test_linear_persistent.py tests/kernels \
            -m gpu "${rest_opts[@]}"
    fi
} 2>&1 | tee -a "$log"

# 2-5. benchmarks: each stage stops starting new cases before its budget ends (15 s; profile: a third) --
bench_opts=(-q -p no:cacheprovider --benchmark-enable --bench-size "${FASTBERT_CHECK_SIZE:-quick}"
            --benchmark-sort=name --benchmark-columns=median,iqr,rounds,iterations)
{
    [ "$kernels_s" -gt 0 ] && stage kernels "$kernels_s" $PY -m pytest benchmarks/test_bench_kernels.py \
        "${bench_opts[@]}" --bench-dtypes "${FASTBERT_CHECK_KERNEL_DTYPES:-float16,bfloat16}" \
        --bench-budget $((kernels_s - 15)) --benchmark-json="$out/kernels.json"
    # TRITON_CACHE_AUTOTUNING: the encoder stage's autotune results, cached on disk, spare the profile
    # re-tuning the same shapes (most of its budget otherwise) and make it time the same tiles.
    [ "$encoder_s" -gt 0 ] && TRITON_CACHE_AUTOTUNING=1 stage encoder "$encoder_s" $PY -m pytest \
        benchmarks/test_bench_encoder.py "${bench_opts[@]}" --bench-budget $((encoder_s - 15)) --bench-compile 0 \
        --benchmark-json="$out/encoder.json"
    profile_size="$([ "${FASTBERT_CHECK_SIZE:-quick}" = tiny ] && echo tiny || echo quick)"
    [ "$profile_s" -gt 0 ] && TRITON_CACHE_AUTOTUNING=1 stage profile "$profile_s" $PY -m benchmarks.profile_encoder \
        --out "$out" --size "$profile_size" --budget $((profile_s * 2 / 3))
    [ "$compile_s" -gt 0 ] && FASTBERT_BENCH_COMPILE_MIN_S=0 stage compile "$compile_s" $PY -m pytest \
        benchmarks/test_bench_encoder.py -k test_encoder_compile "${bench_opts[@]}" --bench-compile 1 \
        --benchmark-json="$out/compile.json"
} 2>&1 | tee -a "$log"

# 6. report --------------------------------------------------------------------------------------------
inputs=()
for f in "$out/kernels.json" "$out/encoder.json" "$out/compile.json"; do
    [ -s "$f" ] && inputs+=(--input "$f")
done
echo "=== summary"
if [ ${#inputs[@]} -gt 0 ]; then
    stage report "$report_s" $PY -m benchmarks.report "${inputs[@]}" --out "$out" 2>&1 | tee -a "$log"
else
    echo "gpu_check: no benchmark JSON was written; no report" | tee -a "$log"
    echo "report 1 0" >>"$stages"
fi

# 7. the rest of the tests, natively on the GPU, in the time left -----------------------------------------
rest=$((total_s - (SECONDS - start_all)))
if [ "$tests_s" -gt 0 ] && [ "$rest" -ge 30 ]; then
    stage tests-rest "$rest" $PY -m pytest tests -m "not gpu" -k "not for_gpus and not configs_compile" \
        "${rest_opts[@]}" "${encoder_tests[@]/#/--ignore=}" 2>&1 | tee -a "$log"
else
    echo "=== [tests-rest] skipped: ${rest}s of the total budget left" | tee -a "$log"
fi

echo "=== stages (name, exit code, seconds; 5 = no test selected, 124 = budget reached):"
cat "$stages"
echo "=== failing tests or benchmarks: $(grep -cE '^(FAILED|ERROR) ' "$log")"
echo "=== gpu_check: $((SECONDS - start_all))s total; files in $out:"
ls -1 "$out"
# Success only when every stage exited 0 (or 5: nothing selected, e.g. no gpu-marked tests).
awk '$2 != 0 && $2 != 5 { bad = 1 } END { exit bad }' "$stages"
