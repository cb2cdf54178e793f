#!/usr/bin/env bash
# Everything a lent CUDA machine is for (15 minutes in all per session), in two calls of the
# device tool: the Triton and Pallas kernels compiled for real and tested, a quick CUDA sample
# of the suite, then benchmarks/gpu.py. Logs and results go under $OUT; the last lines
# printed are a summary.
#
# The device machine has no package index, and its own python3 (torch, triton, JAX, CuPy,
# pytest, hypothesis): it lacks array-api-compat, and the peers liger-kernel and
# cut-cross-entropy. Put their wheels in .whl/ (ignored by git) and carry it:
#
#   pip download --no-deps -d .whl array-api-compat liger-kernel cut-cross-entropy
#   run(command="bash benchmarks/device.sh tests", carry=[".whl"], timeout_s=500)
#   run(command="bash benchmarks/device.sh bench", carry=[".whl"], timeout_s=560)
#
# (a command runs for at most 10 minutes: the tests, then the benchmarks, each fit one; with no
# argument both run). Each step has its own time limit, so that a slow one cannot take the
# rest with it: BUDGET_TESTS (each of three test steps, 140 s) and BUDGET_BENCH (540 s). gpu.py
# prints each row as it is measured, so a cut run still leaves its rows in gpu-bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-/tmp/crossent-device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE="$OUT/.site"  # the carried wheels, installed outside the image's environment
summary=()
step() {  # step NAME SECONDS COMMAND...: run it, log it, remember how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    summary+=("$name: rc=$rc in $((SECONDS - start)) s; $(grep -v "^[[:space:]]*$" "$OUT/$name.log" | tail -n 1)")
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl >"$OUT/pip.log" 2>&1
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY - >"$OUT/versions.txt" 2>&1 <<'EOF'
import torch, triton, array_api_compat
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("triton", triton.__version__, "array-api-compat", array_api_compat.__version__)
EOF

if [[ $PART == all || $PART == tests ]]; then
    # 1. The kernels' own tests, compiled on the GPU (every option, NaN/inf, half precision,
    #    compile and export; the Pallas kernels' under JAX), then the quick CUDA sample: the
    #    torch-triton backend file's sample of the suite, on the GPU. -x: the first failure is
    #    named in the log's last lines.
    export CROSSENT_DEVICE=cuda
    pytest=($PY -m pytest -q -p no:cacheprovider -p no:benchmark)
    step triton-tests "${BUDGET_TESTS:-140}" env CROSSENT_BACKEND=torch "${pytest[@]}" -x \
        tests/test_triton.py tests/test_triton_binary.py tests/test_triton_linear.py
    step pallas-tests "${BUDGET_TESTS:-140}" env CROSSENT_BACKEND=jax "${pytest[@]}" -x \
        tests/test_pallas.py
    step cuda-sample "${BUDGET_TESTS:-140}" env CROSSENT_BACKEND=torch "${pytest[@]}" -n 8 \
        tests/test_categorical.py tests/test_binary.py tests/test_linear.py tests/test_half.py \
        tests/test_nan_inf.py -k "cross_entropy or CrossEntropy or with_logits or linear"
fi
if [[ $PART == all || $PART == bench ]]; then
    # 2. crossent against F.cross_entropy, the dense linear loss, Liger-Kernel and Cut
    #    Cross-Entropy, optax and CuPy: times, TB/s or TFLOP/s, and peak memory.
    step gpu-bench "${BUDGET_BENCH:-540}" $PY benchmarks/gpu.py --pairs 5 \
        --output "$OUT/results-cuda.json"
fi

printf '%s\n' "${summary[@]}"
