#!/usr/bin/env bash
# The one GPU script: on a CUDA machine with torch, triton, transformers, sentence-transformers, pytest,
# pytest-benchmark and matplotlib already installed (no network, fastbert not installed). Headline first:
# the numbers that decide the next step are on disk within about 6 minutes of a cold start (empty Triton
# cache), the rest follows, the whole run stays within 9 minutes.
#   A. headline (default budgets 270 + 45 + 20 s)
#   1. headline: BERT-base encoder rows at 1x128 and 32x128, fp16: fastbert (each row with its error
#      against transformers fp32 and transformers SDPA fp16's error on the same input, and the GEMM
#      picker's choice and timings for every projection shape), HF eager, HF SDPA, then
#      torch.compile(mode="max-autotune") at both shapes (slowest last: a cut-off loses only it)
#   2. profile: the same two shapes (benchmarks/profile_encoder.py): device time split by kernel family,
#      host overhead, CUDA graphs against eager
#   3. report: REPORT.md from what stages 1-2 wrote
#   B. the rest (default budgets 50 + 75 + 50 + 20 s, then what is left of the 540 s total)
#   4. kernels: kernel benchmarks (quick sizes, fp16; FASTBERT_CHECK_KERNEL_DTYPES=float16,bfloat16 adds bf16)
#   5. encoder: the quick encoder grid (both models, padded batches, the corpus encode)
#   6. tests: the encoder tests on CUDA (graph replay, the GEMM picker, fastbert against transformers),
#      then the gpu-marked kernel tests (bf16, TF32, BERT-sized shapes, every autotune config)
#   7. report: REPORT.md again, from every JSON file
#   8. corpus: the corpus benchmark (benchmarks/corpus.py: 2,000 texts from a file to a .npy, fastbert
#      encode against sentence-transformers and its multi-process pool, each engine in its own process),
#      into DIR/<device-slug>/corpus/; budget 90 s, or what is left of the total when less (30 s at least)
#   9. serve: benchmarks/serve.py --fastbert-only, small and bounded (budget 55 s), into DIR/<slug>/serve/
#  10. tests-rest: the rest of the test suite natively on the GPU, with what is left of the total; the
#      CPU-only compile checks are left to CI
# Every stage has a budget and a `timeout` (SIGINT first, so pytest still writes its JSON; SIGKILL 15 s
# later); a stage that runs out is interrupted and the next stage runs. Every file is written as it
# grows (benchmark JSON after each case, the profile after each case, the log line by line, stages.txt
# after each stage), so a run cut off from outside still leaves what it measured. Nothing is installed.
#
# Usage: bash benchmarks/gpu_check.sh [--out DIR]      (default DIR: benchmarks/results)
# Writes DIR/<device-slug>/: gpu_check.log stages.txt headline.json profile.json PROFILE.md kernels.json
# encoder.json REPORT.md speedup.png padding.png tflops.png corpus/{corpus.json,CORPUS.md}. Stage budgets
# (seconds) can be changed with FASTBERT_CHECK_{HEADLINE,PROFILE,REPORT,KERNELS,ENCODER,TESTS,CORPUS,SERVE}_S (0
# skips a stage) and FASTBERT_CHECK_TOTAL_S (the whole run, which bounds stages 8-9);
# FASTBERT_CHECK_SIZE=tiny|quick|full picks the grid of stages 4-5 (default quick; tiny also shrinks stages
# 1-2 to the CPU smoke sizes and stage 8 to 16 texts).
set -uo pipefail
cd "$(dirname "$0")/.."

out_root=benchmarks/results
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out_root="$2"; shift 2 ;;
        --out=*) out_root="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (usage: gpu_check.sh [--out DIR])" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${FASTBERT_GIT_COMMIT:-}" ]; then
    FASTBERT_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)"
fi
export FASTBERT_GIT_COMMIT
# Autotune results cached on disk: every stage after the first reuses the tiles the headline tuned.
export TRITON_CACHE_AUTOTUNING=1
headline_s="${FASTBERT_CHECK_HEADLINE_S:-270}"
profile_s="${FASTBERT_CHECK_PROFILE_S:-45}"
report_s="${FASTBERT_CHECK_REPORT_S:-20}"
kernels_s="${FASTBERT_CHECK_KERNELS_S:-50}"
encoder_s="${FASTBERT_CHECK_ENCODER_S:-75}"
tests_s="${FASTBERT_CHECK_TESTS_S:-50}"
corpus_s="${FASTBERT_CHECK_CORPUS_S:-90}"
serve_s="${FASTBERT_CHECK_SERVE_S:-55}"
total_s="${FASTBERT_CHECK_TOTAL_S:-540}"
size="${FASTBERT_CHECK_SIZE:-quick}"
start_all=$SECONDS

slug="$($PY -c 'from benchmarks.timing import device_slug; print(device_slug())' 2>/dev/null)" || slug=unknown
[ -n "$slug" ] || slug=unknown
out="$out_root/$slug"
mkdir -p "$out"
log="$out/gpu_check.log"
stages="$out/stages.txt"
rm -f "$log" "$stages" "$out"/{headline,kernels,encoder,compile,profile}.json "$out/PROFILE.md" \
    "$out"/corpus/{corpus.json,CORPUS.md}
echo "gpu_check: device slug $slug, writing to $out" | tee "$log"

# stage NAME BUDGET_S CMD...: run CMD under timeout (SIGINT first, SIGKILL 15 s later), log its time and
# append "NAME EXIT SECONDS" to stages.txt. Budget 0 skips the stage.
stage() {
    local name="$1" budget="$2" begin=$SECONDS rc
    shift 2
    if [ "$budget" -le 0 ]; then
        echo "=== [$name] skipped (budget 0)"
        return 0
    fi
    echo "=== [$name] at $((SECONDS - start_all))s, budget ${budget}s: $*"
    timeout -s INT -k 15 "$budget" "$@"
    rc=$?
    echo "=== [$name] exit $rc after $((SECONDS - begin))s$([ "$rc" -eq 124 ] && echo ' (budget reached)')"
    echo "$name $rc $((SECONDS - begin))" >>"$stages"
    return 0
}

report() {  # report NAME: REPORT.md from every JSON file written so far, and the profile
    local inputs=() f
    for f in "$out"/{headline,kernels,encoder}.json; do
        [ -s "$f" ] && inputs+=(--input "$f")
    done
    if [ ${#inputs[@]} -eq 0 ]; then
        echo "gpu_check: no benchmark JSON was written; no report"
        echo "$1 1 0" >>"$stages"
        return 0
    fi
    stage "$1" "$report_s" $PY -m benchmarks.report "${inputs[@]}" --profile "$out/profile.json" --out "$out"
}

bench_opts=(-q -p no:cacheprovider --benchmark-enable --benchmark-sort=name
            --benchmark-columns=median,iqr,rounds,iterations)
headline_size="$([ "$size" = tiny ] && echo tiny || echo headline)"
headline_models="$([ "$size" = tiny ] && echo tiny || echo bert-base)"
profile_size="$([ "$size" = tiny ] && echo tiny || echo quick)"
profile_cases="$([ "$size" = tiny ] && echo 2x16 || echo 32x128,1x128)"
headline_compile="$([ "$size" = tiny ] && echo 0 || echo 1)"  # tiny: a CPU smoke run, nothing to compile

# A. headline --------------------------------------------------------------------------------------------
{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    # The encoder rows and the compile baseline in one process: rows first, compiles last (the
    # compile_baseline marker), so a budget that runs out costs only the compiles.
    FASTBERT_BENCH_COMPILE_MIN_S=0 stage headline "$headline_s" $PY -m pytest benchmarks/test_bench_encoder.py \
        -k "test_encoder and not varlen" "${bench_opts[@]}" --bench-size "$headline_size" \
        --bench-models "$headline_models" --bench-compile "$headline_compile" --bench-budget $((headline_s - 15)) \
        --benchmark-json="$out/headline.json"
    stage profile "$profile_s" $PY -m benchmarks.profile_encoder --out "$out" --size "$profile_size" \
        --models "$headline_models" --cases "$profile_cases" --budget $((profile_s * 2 / 3))
    report report-headline
    echo "=== headline written after $((SECONDS - start_all))s"
} 2>&1 | tee -a "$log"

# B. the rest -------------------------------------------------------------------------------------------
rest_opts=(-q -rfE -p no:cacheprovider --durations=5 --ignore=tests/test_benchmarks_smoke.py)
encoder_tests=(tests/test_graphs.py tests/test_gemm.py tests/test_model.py tests/test_encode.py tests/test_patch.py)
{
    stage kernels "$kernels_s" $PY -m pytest benchmarks/test_bench_kernels.py "${bench_opts[@]}" \
        --bench-size "$size" --bench-dtypes "${FASTBERT_CHECK_KERNEL_DTYPES:-float16}" \
        --bench-budget $((kernels_s - 15)) --benchmark-json="$out/kernels.json"
    stage encoder "$encoder_s" $PY -m pytest benchmarks/test_bench_encoder.py "${bench_opts[@]}" \
        --bench-size "$size" --bench-budget $((encoder_s - 15)) --bench-compile 0 \
        --benchmark-json="$out/encoder.json"
    if [ "$tests_s" -gt 0 ]; then
        # The tests only a GPU gives meaning to (these files' unmarked tests run on CUDA too), then the
        # gpu-marked kernel tests, newest kernel first.
        stage tests-encoder "$((tests_s * 2 / 5))" $PY -m pytest "${encoder_tests[@]}" "${rest_opts[@]}"
        stage tests-gpu "$((tests_s * 3 / 5))" $PY -m pytest tests/kernels/test_linear_persistent.py tests/kernels \
            -m gpu "${rest_opts[@]}"
    fi
    report report
    # The corpus benchmark end to end (file in, .npy out): three engines share the stage, each stopped at
    # its third of it (fastbert's committed rows still count); a GPU machine runs fastbert on Triton.
    corpus_budget=$((total_s - (SECONDS - start_all)))
    [ "$corpus_budget" -gt "$corpus_s" ] && corpus_budget=$corpus_s
    if [ "$corpus_budget" -ge 30 ]; then
        corpus_size="$([ "$size" = tiny ] && echo tiny || echo quick)"
        corpus_runtime=(--device cuda --backend triton)
        $PY -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null \
            || corpus_runtime=(--device cpu --backend torch)
        stage corpus "$corpus_budget" $PY -m benchmarks.corpus --out "$out/corpus" --size "$corpus_size" \
            "${corpus_runtime[@]}" --budget $(((corpus_budget - 15) / 3))
    else
        echo "=== [corpus] skipped: ${corpus_budget}s of the total budget left"
    fi
    # The server under a small bounded load (benchmarks/serve.py, fastbert only: infinity is not installed
    # here); only where the serve extra's FastAPI and uvicorn are importable, since nothing is installed.
    if [ "$serve_s" -ge 30 ] && $PY -c 'import fastapi, uvicorn, httpx' 2>/dev/null; then
        stage serve "$serve_s" $PY -m benchmarks.serve --fastbert-only --out "$out/serve" \
            --max-requests 100 --max-seconds 3 --startup-timeout 25
    else
        echo "=== [serve] skipped: no fastapi/uvicorn/httpx or FASTBERT_CHECK_SERVE_S < 30"
    fi
    rest=$((total_s - (SECONDS - start_all)))
    if [ "$tests_s" -gt 0 ] && [ "$rest" -ge 30 ]; then
        stage tests-rest "$rest" $PY -m pytest tests -m "not gpu" -k "not for_gpus and not configs_compile" \
            "${rest_opts[@]}" "${encoder_tests[@]/#/--ignore=}"
    else
        echo "=== [tests-rest] skipped: ${rest}s of the total budget left"
    fi
} 2>&1 | tee -a "$log"

{
    echo "=== stages (name, exit code, seconds; 5 = no test selected, 124 = budget reached):"
    cat "$stages"
    echo "=== failing tests or benchmarks: $(grep -cE '^(FAILED|ERROR) ' "$log")"
    echo "=== gpu_check: $((SECONDS - start_all))s total; files in $out:"
    ls -1 "$out"
} 2>&1 | tee -a "$log"
# Success only when every stage exited 0 (or 5: nothing selected, e.g. no gpu-marked tests).
awk '$2 != 0 && $2 != 5 { bad = 1 } END { exit bad }' "$stages"
