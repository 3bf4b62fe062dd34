#!/usr/bin/env bash
# Runs everything that needs a GPU against an existing build, on whatever GPUs the machine has:
#   unit        the CPU tests
#   gpu         the GPU tests on every GPU (ranks spread over the GPUs, sharing them where fewer)
#   gpu1        on a machine with several GPUs, the GPU tests once more on the first GPU alone
#   sanitizer   compute-sanitizer memcheck over a representative subset of the GPU tests
#   example     the verified C++ example
#   efficiency  the loopback efficiency figures of the kernels on one GPU
#   perf        tpcomm-perf in graph and eager mode (JSON and PNG)
#   fused       tpcomm-perf --fused: all-reduce + residual add + RMSNorm, hidden 8192 and 5120,
#               1 to 512 tokens (JSON)
#   decode      tpcomm-decode: Llama-3 8B shapes, batch 1 and 8, NCCL and tpcomm (JSON)
#   python      the Python package's tests and its per-call overhead; the package must be
#               installed (pip install .)
# STEPS picks some (default: all, in that order); GPU_TEST_FILTER narrows the GPU tests;
# PERF_ARGS adds tpcomm-perf arguments. Logs and results go to OUTDIR (default build/gpu-suite).
#
# usage: [STEPS="gpu perf"] tools/gpu_suite.sh [OUTDIR] [BUILD_DIR]
set -uo pipefail
out=${1:-build/gpu-suite}
build=${2:-build}
steps=${STEPS:-unit gpu gpu1 sanitizer example efficiency perf fused decode python}
mkdir -p "$out"
status=0
# A rank that never comes must fail a run in seconds, not after the five-minute default.
export TPCOMM_TIMEOUT_MS=${TPCOMM_TIMEOUT_MS:-20000}
export NCCL_NVLS_ENABLE=0
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
nvidia-smi -L || true
wants() { [[ " $steps " == *" $1 "* ]]; }
run() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
  return $rc
}
summary() { grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran|Timeout|Failure" "$1" | head -60; }
filter=${GPU_TEST_FILTER:+--gtest_filter=$GPU_TEST_FILTER}

wants unit && run unit 300 "$build/tests/tpcomm_unit_tests"
if wants gpu; then
  run gpu 1800 "$build/tests/tpcomm_gpu_tests" $filter
  summary "$out/gpu.log"
fi
if wants gpu1 && [ "$gpus" -gt 1 ]; then
  CUDA_VISIBLE_DEVICES=0 run gpu1 1800 "$build/tests/tpcomm_gpu_tests" $filter
  summary "$out/gpu1.log"
fi
if wants sanitizer; then
  subset='ApiGpu.*:Routes.*:*SpecialValues*/2ranks_*:ZeroCopyEager.*:FusedNorm.SpecialValues'
  subset+=':FusedNorm.OneRank:FusedNorm.EveryPath*:*FusedNormWorld*/2ranks'
  # API errors are not reported: NCCL's init probes its kernels and gets error 209 (no kernel image)
  # by design, which would fail the step whatever tpcomm does.
  run sanitizer 1800 compute-sanitizer --tool memcheck --error-exitcode 3 --report-api-errors no \
    "$build/tests/tpcomm_gpu_tests" --gtest_filter="$subset"
  grep -E "ERROR SUMMARY|Program hit|^\[  (FAILED|PASSED) " "$out/sanitizer.log" | head -30
fi
wants example && run example 150 "$build/tools/tpcomm-example"
if wants efficiency; then
  run efficiency 300 "$build/tools/tpcomm-loopback-efficiency" && cat "$out/efficiency.log"
fi
if wants perf; then
  for mode in graph eager; do
    run "perf-$mode" 600 "$build/tools/tpcomm-perf" "--$mode" -J "$out/perf-$mode.json" \
      ${PERF_ARGS:-} && grep -v "^#  Rank" "$out/perf-$mode.log"
  done
  python3 tools/plot_perf.py "$out/perf-graph.json" "$out/perf-eager.json" -o "$out/latency.png" ||
    true
fi
if wants fused; then
  for hidden in 8192 5120; do
    row=$((hidden * 2 / 1024))K
    run "fused-$hidden" 300 "$build/tools/tpcomm-perf" --graph --fused "$hidden" -b "$row" \
      -e "$((hidden * 2 * 512 / 1024))K" -J "$out/fused-$hidden.json" ${PERF_ARGS:-} &&
      grep -E "^ +[0-9]|^# Out" "$out/fused-$hidden.log"
  done
fi
if wants decode; then
  run decode 600 "$build/tools/tpcomm-decode" --model llama3-8b --batch-size 1,8 --comm all \
    --json "$out/decode.json" && grep -E "^   |logits of" "$out/decode.log"
fi
if wants python; then
  run python 900 python3 -m pytest -v tests/python
  grep -E " (PASSED|FAILED|SKIPPED)|passed|failed" "$out/python.log" | tail -30
  if [ "$gpus" -gt 1 ]; then
    run python-overhead 300 python3 tools/python_overhead.py --json "$out/python-overhead.json" &&
      cat "$out/python-overhead.log"
  fi
fi
exit $status
