#!/usr/bin/env bash
# Runs everything that needs a GPU against an existing build: the whole test suite, the example,
# the loopback efficiency figures and a tpcomm-perf sweep in graph and eager mode (JSON and PNG).
# Logs and results go to OUTDIR (default: build/gpu-suite).
#
# usage: tools/gpu_suite.sh [OUTDIR] [BUILD_DIR]
set -uo pipefail
out=${1:-build/gpu-suite}
build=${2:-build}
mkdir -p "$out"
status=0
# A rank that never comes must fail a run in seconds, not after the five-minute default.
export TPCOMM_TIMEOUT_MS=${TPCOMM_TIMEOUT_MS:-20000}
run() {
  local name=$1
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  timeout 150 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
  return $rc
}
nvidia-smi -L || true
run unit "$build/tests/tpcomm_unit_tests"
run gpu "$build/tests/tpcomm_gpu_tests" ${GPU_TEST_FILTER:+--gtest_filter=$GPU_TEST_FILTER}
grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran" "$out/gpu.log" | head -40
run example "$build/tools/tpcomm-example"
run efficiency "$build/tools/tpcomm-loopback-efficiency" && cat "$out/efficiency.log"
for mode in graph eager; do
  run "perf-$mode" "$build/tools/tpcomm-perf" "--$mode" -J "$out/perf-$mode.json" &&
    grep -v "^#  Rank" "$out/perf-$mode.log"
done
python3 tools/plot_perf.py "$out/perf-graph.json" "$out/perf-eager.json" -o "$out/latency.png" ||
  true
exit $status
