#!/usr/bin/env bash
# A GPU session's checks, one stage per device call (each fits in 10 minutes).
#
# Usage, from the repository root of a checkout (installed or not) on a CUDA machine:
#   bash benchmarks/gpu_session.sh test     # python -m pytest: CUDA parity (bf16 too), integration
#   bash benchmarks/gpu_session.sh kernel   # benchmarks/run.py --gpu --kernel
#   bash benchmarks/gpu_session.sh unet     # benchmarks/run.py --gpu --unet (steps, generations)
#   bash benchmarks/gpu_session.sh kernel -- -k float16   # anything after -- goes to pytest
#
# Writes into $OUT (default ./gpu-out): environment.txt, <stage>.log, pytest.xml (test) and
# results/<gpu>-<date>-<stage>.json + .md (+ -tflops.png with matplotlib). Commit the JSON under
# benchmarks/results/ and rebuild its report with benchmarks/report.py.
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
test | kernel | unet) ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh {test|kernel|unet} [-- PYTEST_ARGS...]" >&2
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

if [ "$stage" = test ]; then
    python3 -m pytest -p no:cacheprovider -q -rs --junitxml="$out/pytest.xml" "$@" 2>&1 |
        tee "$out/test.log"
    exit "${PIPESTATUS[0]}"
fi

name=$(python3 -c "
import datetime
from benchmarks.environment import device_slug
print(f'{device_slug()}-{datetime.date.today().isoformat()}')
") || exit 1
python3 benchmarks/run.py --gpu "--$stage" --output "$out/results/$name-$stage.json" -- "$@" 2>&1 |
    tee "$out/$stage.log"
exit "${PIPESTATUS[0]}"
