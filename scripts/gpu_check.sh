#!/usr/bin/env bash
# GPU check: the `gpu` test subset on CuPy, then a short CuPy-vs-NumPy timing.
#
#   bash scripts/gpu_check.sh [OUTDIR]        # default OUTDIR: gpu_results/
#
# Writes OUTDIR/pytest_gpu.txt, OUTDIR/timing.txt and, when benchmarks/run.py
# exists, OUTDIR/benchmark.txt. Exits with pytest's status. Meant to finish in
# well under 5 minutes on a GPU machine (each step has its own time limit).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-gpu_results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

echo "== environment" | tee "$OUT/pytest_gpu.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  "$PY" -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__)" 2>&1 || true
} | tee -a "$OUT/pytest_gpu.txt"

echo "== pytest -m gpu (SCRATCHMETA_BACKEND=cupy)" | tee -a "$OUT/pytest_gpu.txt"
# only the files that hold gpu tests: the rest of the suite is for the CPU
files=$(grep -l "mark.gpu" tests/test_*.py)
SCRATCHMETA_BACKEND=cupy timeout 180 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider $files \
    2>&1 | tee -a "$OUT/pytest_gpu.txt"
status=${PIPESTATUS[0]}

echo "== timing: one MAML meta-gradient of a conv net, NumPy vs CuPy (float64)" | tee "$OUT/timing.txt"
timeout 60 "$PY" - <<'PY' 2>&1 | tee -a "$OUT/timing.txt"
import sys, time
sys.path.insert(0, "tests")
import numpy as np
import scratchmeta as sm
from scratchmeta import backend
from test_backend import _maml_step

def best_of(n):
    _maml_step()                                   # warm-up (CuPy compiles kernels)
    backend.synchronize()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        _maml_step()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)

for name in ("numpy", "cupy"):
    sm.set_backend(name)
    print(f"{name:6s} best of 5: {best_of(5) * 1e3:8.2f} ms  (tiny net: launch-bound on a GPU)")
PY

if [ -f benchmarks/run.py ]; then
    # the same short benchmark on each backend: CuPy against NumPy (and the PyTorch CPU loop)
    : > "$OUT/benchmark.txt"
    for b in cupy numpy; do
        echo "== benchmarks/run.py --quick --backend $b" | tee -a "$OUT/benchmark.txt"
        timeout 120 "$PY" benchmarks/run.py --quick --backend $b 2>&1 | tee -a "$OUT/benchmark.txt"
    done
else
    echo "benchmarks/run.py not found: skipped" | tee "$OUT/benchmark.txt"
fi
exit $status
