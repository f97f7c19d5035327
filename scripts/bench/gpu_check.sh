#!/usr/bin/env bash
# The one command for a lent GPU machine (docs/gpu.md): versions, `pytest -m gpu`, then the GPU
# benchmark (scripts/bench/bench_gpu.py). No set-up beyond the README's (.venv from requirements.txt).
#
#   bash scripts/bench/gpu_check.sh [OUT_DIR]
#
# Results go to $OUT when it is set, else to OUT_DIR, else to out/gpu_check: pytest_gpu.txt and
# pytest_gpu.xml (JUnit, with the measured agreements as properties), bench_gpu.md, bench_gpu.json,
# loso_log.txt. The exit code is 0 when the tests and the benchmark succeeded.
#
# The whole check ends within GPU_CHECK_TOTAL_S seconds (default 460, for an 8-minute slot): the
# tests may take GPU_CHECK_TESTS_S (default 200); the benchmark starts no part later than
# GPU_CHECK_GRACE_S (default 60) before the end and is stopped at the end, keeping the parts it
# finished. Without a GPU the CPU-side parts run (the tests skip, the benchmark counts FLOPs), one
# line says so, and the exit code is 0 when they succeeded.
set -u
cd "$(dirname "$0")/../.."
out="${OUT:-${1:-out/gpu_check}}"
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python3
total=${GPU_CHECK_TOTAL_S:-460}
tests_limit=${GPU_CHECK_TESTS_S:-200}
grace=${GPU_CHECK_GRACE_S:-60}

# `timeout` ends a part that overruns its share; where coreutils lack it, parts run unbounded.
limit() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null; then timeout "$seconds" "$@"; else "$@"; fi
}

"$py" scripts/bench/bench_gpu.py --versions
gpu=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))')

echo "== pytest -m gpu (at most ${tests_limit} s)"
limit "$tests_limit" "$py" -m pytest -m gpu -rsxX -o junit_family=xunit1 --junitxml "$out/pytest_gpu.xml" \
    2>&1 | tee "$out/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}

left=$((total - SECONDS))
echo "== scripts/bench/bench_gpu.py (at most ${left} s)"
limit "$left" "$py" scripts/bench/bench_gpu.py --out "$out" --budget_s $((left - grace))
bench_rc=$?

if [ "$gpu" != 1 ]; then
    echo "no GPU: torch.cuda.is_available() is False here; ran the CPU-side parts only (GPU tests skipped, FLOP counts in $out)"
else
    echo "gpu_check: pytest exit code ${tests_rc}, benchmark exit code ${bench_rc}, ${SECONDS} s; results in $out"
fi
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
