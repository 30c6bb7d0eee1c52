#!/usr/bin/env bash
# The prepared GPU check (`make gpu-check`; on a lent GPU machine: `bash bench/gpu_check.sh`):
# tests/test_cuda.py, then bench/gpu.py; logs and results under ${OUT:-out/gpu}
# (cuda_tests.log, bench.log, gpu.json, gpu.md, python.txt). Needs no network.
#
# Python: the first of $PYTHON, .venv/bin/python, python3 whose torch sees a CUDA device; if
# none does, the first that has torch (the CUDA tests then skip and the bench runs --smoke).
# intermod is imported from this checkout (through a symbolic link when the interpreter has no
# install of it); igraph and leidenalg, which a GPU image may lack, are installed from the
# wheels in .whl/ (`make gpu-wheels` downloads them; carry .whl to the GPU machine).
# SKIP_TESTS=1 runs the bench alone; BUDGET_S (default 270) is the bench's wall-clock budget and
# BENCH_ARGS adds arguments to bench/gpu.py (e.g. "--edge-tokens 2048 --layers 6").
# Exit status: 0 when the tests and the bench both passed, else 1 (2: no usable Python).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

probe() { "$1" -c "import torch, sys; sys.exit(0 if $2 else 1)" >/dev/null 2>&1; }

py=""
for want in "torch.cuda.is_available()" "True"; do
    for cand in "${PYTHON:-}" .venv/bin/python python3; do
        if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && probe "$cand" "$want"; then
            py=$cand
            break 2
        fi
    done
done
if [ -z "$py" ]; then
    echo "gpu-check: no Python with torch among \$PYTHON, .venv/bin/python, python3" >&2
    exit 2
fi

if ! "$py" -c "import intermod" >/dev/null 2>&1; then
    src=$(mktemp -d)
    ln -s "$PWD" "$src/intermod"
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c "import igraph, leidenalg" >/dev/null 2>&1; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu-check: $py lacks igraph/leidenalg and .whl/ holds no wheels: run 'make gpu-wheels' and carry .whl" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 2
    export PYTHONPATH="$site:$PYTHONPATH"
fi
"$py" - <<'EOF' 2>&1 | tee "$out/python.txt"
import sys, torch, intermod, igraph, leidenalg, transformers
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CUDA tests skip, bench --smoke)"
print(f"gpu-check: python {sys.executable} {sys.version.split()[0]}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}, igraph {igraph.__version__}, "
      f"leidenalg {leidenalg.version}; intermod from {intermod.__path__[0]}; GPU: {cuda}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

tests=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    "$py" -m pytest -q -rs -p no:cacheprovider -o timeout=120 tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.log"
    tests=${PIPESTATUS[0]}
fi
mode="--budget-s ${BUDGET_S:-270}"
probe "$py" "torch.cuda.is_available()" || mode="--smoke"
# shellcheck disable=SC2086  # BENCH_ARGS and mode are lists of arguments
"$py" bench/gpu.py --out "$out" $mode ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu-check: tests exit $tests, bench exit $bench; results in $out"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
