#!/bin/bash
# The checks a GPU session runs, in one go: the CUDA kernel's tests on the device (the GPU tests
# run instead of skipping), then benchmarks/givens_cuda.py. Results go to $OUT (default
# results/gpu_checks). Uses the machine's python3 with torch and numba-cuda; wheels in .whl/ are
# installed to /tmp/site first: carry the numba-cuda and numpy that CI tests (numba-cuda 0.30 still
# registers np.row_stack, which numpy 2.5 removed).
#     bash benchmarks/gpu_checks.sh
set -o pipefail
OUT=${OUT:-results/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
python3 - <<'PY'
import numba, numba_cuda, torch
from numba import cuda
print("torch", torch.__version__, "numba", numba.__version__, "numba-cuda", numba_cuda.__version__,
      "numba sees GPU:", cuda.is_available())
PY
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_givens_cuda.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 300 python3 benchmarks/givens_cuda.py --out "$OUT/givens_cuda.md" 2>&1 | tee "$OUT/givens_cuda.log"
# The pre-typed launch path (opt-in, RLSTRUCT_CUDA_LAUNCH=pretyped): its tests on the GPU, then
# host overhead per call, 4096 x 8192 forward vs memcpy, a captured policy forward vs dense.
RLSTRUCT_CUDA_LAUNCH=pretyped timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_givens_cuda_launch.py tests/test_givens_cuda.py 2>&1 | tee "$OUT/gpu_tests_pretyped.log"
RLSTRUCT_CUDA_LAUNCH=pretyped timeout 200 python3 benchmarks/givens_cuda_launch.py --out "$OUT/givens_cuda_launch.md" 2>&1 | tee "$OUT/givens_cuda_launch.log"
