#!/usr/bin/env bash
# One lent-GPU session in one call: environment report, the GPU tests, the GPU timing table and
# where the torch-cuda time goes (scripts/profile_gpu_pipeline.py) and a GPU training run
# (resumed from .devdata/train when it holds a checkpoint), each under its own time limit, every result written to $OUT
# as it is made (a call cut short still returns what finished).
#
#   scripts/device-session.sh [TRAIN_SECONDS]
#
# Expects (made here, carried by the call): .whl/ (wheels the GPU image lacks: nibabel) and
# .devdata/ (a few training volumes and .devdata/train/config.json, see training-runs/ for the
# recipe; on a GPU give it "sampler_workers" (e.g. 8) and a larger "batch": prefetch.py). Runs under the image's python3 (its torch, onnxruntime, cuda-bindings, NVRTC).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device-out}"
mkdir -p "$OUT"
TRAIN_SECONDS="${1:-90}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 - <<'EOF'
import importlib
for name in ("torch", "onnxruntime", "onnx", "nibabel", "numpy", "cuda.bindings", "cupy", "tensorrt"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:  # a report, not a check
        print(name, "missing:", type(exc).__name__, exc)
import torch
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== GPU tests" >&2
timeout 330 python3 -m pytest -m gpu -q -rA -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$OUT/gpu-tests.xml" \
  tests/test_cuda_kernel.py tests/test_gpu_backends.py tests/test_adapt_device.py tests/test_training.py tests/test_api.py \
  > "$OUT/gpu-tests.log" 2>&1
tests_status=$?
tail -40 "$OUT/gpu-tests.log"

echo "== timing" >&2
timeout 150 python3 -m arssr_rt.bench.gpu --json "$OUT/gpu-bench.json" > "$OUT/gpu-bench.md" 2>&1
timing_status=$?
cat "$OUT/gpu-bench.md"

echo "== where the torch-cuda time goes" >&2
for precision in fp16 fp32; do
  timeout 90 python3 scripts/profile_gpu_pipeline.py --precision "$precision" > "$OUT/profile-$precision.txt" 2>&1
  head -12 "$OUT/profile-$precision.txt"
done

if [ -f .devdata/train/config.json ]; then
  echo "== patch sampler throughput (how many --sampler-workers this machine needs)" >&2
  timeout 90 python3 scripts/sampler_throughput.py .devdata/train/config.json --workers 0 4 8 12 --batch 32 --steps 30 \
    > "$OUT/sampler.txt" 2>&1
  cat "$OUT/sampler.txt"
fi

if [ -f .devdata/train/config.json ] && [ "$TRAIN_SECONDS" -gt 0 ]; then
  echo "== training probe (${TRAIN_SECONDS}s)" >&2
  mkdir -p "$OUT/train" && cp .devdata/train/config.json .devdata/train/checkpoint.pt .devdata/train/log.jsonl "$OUT/train/" 2>/dev/null
  timeout "$TRAIN_SECONDS" python3 -m arssr_rt train --out "$OUT/train" --resume --quiet > "$OUT/train/stdout.log" 2>&1
  tail -5 "$OUT/train/log.jsonl" 2>/dev/null; tail -5 "$OUT/train/stdout.log"
fi
echo "tests=$tests_status timing=$timing_status"
exit $(( tests_status != 0 && tests_status != 5 ? tests_status : timing_status ))
