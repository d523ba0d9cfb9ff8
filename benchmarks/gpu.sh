#!/usr/bin/env bash
# GPU benchmark of the inference session, in one go (< 5 minutes on an H100/H200):
#   1. the GPU and which ONNX Runtime providers load (what each `model.providers` request really runs on);
#   2. benchmarks/ort_session.py --gpu: the reference model at 256²/512²/1024² Mono8, batch 1/8/32:
#      CPU (plain, IOBinding) vs CUDA (plain, IOBinding, IOBinding + CUDA graph) vs TensorRT (fp32, fp16):
#      frames/s, single-frame latency p50/p99, probability difference from the CPU; a provider that
#      does not load prints "not available: <why>";
#   3. a short whole-line run with model.providers: cuda (where linewatch's dependencies are installed).
#
# Prerequisites: Python >= 3.11 with numpy, onnx and onnxruntime-gpu 1.31 (CUDA 13 build) importable
# (PYTHONPATH may point at an unpacked wheel). CUDA 13 / cuDNN 9 libraries: NVIDIA's pip wheels are
# found by onnxruntime's preload, else put their lib dirs on LD_LIBRARY_PATH. TensorRT (libnvinfer.so.10)
# is optional. linewatch need not be installed: inspect/ is put on PYTHONPATH. Step 3 needs linewatch's
# dependencies (pyzmq, pydantic, PyYAML, fastapi, opencv...); without them it prints "not available".
# Runs on a CPU-only machine too (GPU rows then say "not available").
#
# Environment: PYTHON (python3), BENCH_RESULTS (results folder, benchmarks/results), BENCH_SECONDS
# (seconds per throughput cell, 0.6), BENCH_SIZES ("256 512 1024"), BENCH_BATCHES ("1 8 32"),
# BENCH_CACHE (TensorRT engine cache, /tmp/linewatch-bench-cache), BENCH_LINE_FRAMES (1500; 0 = skip).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${BENCH_RESULTS:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/inspect${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu-$(date -u +%Y%m%dT%H%M%SZ).log"
exec > >(tee "$LOG") 2>&1

echo "== machine ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"
echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== ONNX Runtime session: providers, then CPU vs CUDA vs TensorRT"
# shellcheck disable=SC2086
timeout 240 "$PY" benchmarks/ort_session.py --gpu --out "$OUT" --seconds "${BENCH_SECONDS:-0.6}" \
  --sizes ${BENCH_SIZES:-256 512 1024} --batches ${BENCH_BATCHES:-1 8 32} \
  --cache "${BENCH_CACHE:-/tmp/linewatch-bench-cache}" \
  || echo "session benchmark: stopped (exit $?)"

echo "== whole line, model.providers: cuda"
FRAMES=${BENCH_LINE_FRAMES:-1500}
if [ "$FRAMES" = 0 ]; then
  echo "skipped (BENCH_LINE_FRAMES=0)"
elif ! why=$("$PY" -c "import zmq, pydantic, yaml, fastapi, cv2, prometheus_client, sqlite_utils" 2>&1); then
  echo "not available: linewatch's dependencies are missing ($(echo "$why" | tail -1))"
elif ! why=$("$PY" -c "
from pathlib import Path
from linewatch.runtime import SessionSettings, open_session
open_session(Path('models/reference/reference.onnx').read_bytes(), SessionSettings(providers='cuda'), 'probe')
" 2>&1); then
  echo "not available: $(echo "$why" | tail -1)"
else
  timeout 90 "$PY" benchmarks/line.py --fps 300 --frames "$FRAMES" --providers cuda \
    || echo "whole-line run: stopped (exit $?)"
fi
echo "== written: $LOG and the ort_gpu-*.md/json tables in $OUT"
