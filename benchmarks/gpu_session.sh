#!/usr/bin/env bash
# A GPU session's checks, one stage per device call (each sized to fit in 10 minutes).
#
# Usage, from the repository root of a checkout (installed or not) on a CUDA machine:
#   bash benchmarks/gpu_session.sh test-kernel      # tests/test_kernel.py + test_ops.py on CUDA
#   bash benchmarks/gpu_session.sh test-rest        # every other test (integration on CUDA, ...)
#   bash benchmarks/gpu_session.sh kernel-fp16      # benchmarks/run.py --gpu --kernel, fp16 only
#   bash benchmarks/gpu_session.sh kernel-bf16      # the same, bf16 only
#   bash benchmarks/gpu_session.sh unet-step        # benchmarks/run.py --gpu --unet: UNet steps
#   bash benchmarks/gpu_session.sh unet-generation  # the whole 50-step generations
#   bash benchmarks/gpu_session.sh kernel-fp16 -- -k sd21   # after --: pytest (a -k narrows)
#
# The test stages set ENTROPY_ATTN_AUTOTUNE=0 (one tile per shape: a few hundred kernels compile
# instead of thousands; test_every_cuda_config_matches_fp64 still checks every tile) and skip
# tests/test_kernel_compile.py (ahead-of-time compilation, which CPU CI runs). Writes into $OUT
# (default ./gpu-out): environment.txt, <stage>.log, <stage>.xml (test stages) and
# results/<gpu>-<date>-<stage>.json + .md (+ -tflops.png with matplotlib). Commit the JSON under
# benchmarks/results/ and rebuild its report there with benchmarks/report.py.
#
# A machine without diffusers and without a package index: on a machine with one, run
# ../shared/tools/gpu-wheels first (it puts the wheels in .whl/) and bring .whl/ along; this
# script installs them into .site/ and puts .site/ and the checkout on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
case "$stage" in
test-kernel) tests=(tests/test_kernel.py tests/test_ops.py) ;;
test-rest)
    tests=(--ignore=tests/test_kernel.py --ignore=tests/test_ops.py
        --ignore=tests/test_kernel_compile.py)
    ;;
kernel-fp16) suite=--kernel select="float16 and not bfloat16" ;;
kernel-bf16) suite=--kernel select=bfloat16 ;;
unet-step) suite=--unet select=test_unet_step ;;
unet-generation) suite=--unet select=test_generation ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh" \
        "{test-kernel|test-rest|kernel-fp16|kernel-bf16|unet-step|unet-generation}" \
        "[-- PYTEST_ARGS...]" >&2
    exit 2
    ;;
esac
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out/results"

if ! python3 -c "import diffusers" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    python3 - <<'PY'
import importlib
import sys

print("python", sys.version.split()[0])
for name in ("torch", "triton", "diffusers", "transformers", "PIL", "matplotlib",
             "pytest_benchmark", "entropy_attn"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as error:  # a missing one is reported, the stage decides what it needs
        print(name, "MISSING:", type(error).__name__, error)
import torch

print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
} 2>&1 | tee "$out/environment.txt"

if [ "$stage" = test-kernel ] || [ "$stage" = test-rest ]; then
    ENTROPY_ATTN_AUTOTUNE=0 python3 -m pytest -p no:cacheprovider -q -rs \
        --junitxml="$out/$stage.xml" "${tests[@]}" "$@" 2>&1 | tee "$out/$stage.log"
    exit "${PIPESTATUS[0]}"
fi

name=$(python3 -c "
import datetime
from benchmarks.environment import device_slug
print(f'{device_slug()}-{datetime.date.today().isoformat()}')
") || exit 1
# A -k of the caller narrows the stage's own selection instead of replacing it.
extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = -k ] && [ $# -gt 1 ]; then
        select="($select) and ($2)"
        shift 2
    else
        extra+=("$1")
        shift
    fi
done
python3 benchmarks/run.py --gpu --output "$out/results/$name-$stage.json" "$suite" \
    -- -k "$select" ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/$stage.log"
exit "${PIPESTATUS[0]}"
