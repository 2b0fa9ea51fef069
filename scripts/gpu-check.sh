#!/usr/bin/env bash
# GPU check for arssr-rt: the GPU tests, then an end-to-end timing table.
#
#   scripts/gpu-check.sh [--model NAME|DIR] [--spec rdn|rescnn|srresnet] [--size 128] [--scale 2]
#                        [--repeat 3] [--tile 128] [--json PATH]
#
# 1. pytest -m gpu on tests/ (each GPU backend against onnxruntime on the CPU; the CUDA
#    sampler against its numpy mirror (tests/kernel_mirror.py); a CUDA bf16 training run that resumes on the CPU).
# 2. The GPU timing table of arssr_rt/bench/gpu.py (every GPU backend that opens here, fp16
#    and fp32, against the fp32 torch reference done the published way; see its docstring).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

echo "== GPU tests" >&2
"$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider
tests_status=$?

echo "== timing" >&2
"$PY" -m arssr_rt.bench.gpu "$@"
timing_status=$?
exit $(( tests_status != 0 && tests_status != 5 ? tests_status : timing_status ))
