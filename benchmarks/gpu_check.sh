#!/usr/bin/env bash
# Every GPU check of the engine in one call, for a session lent a GPU machine (the device tool runs
# it in the repository root; results go under $OUT). The GPU machine has torch and transformers
# but no Ray and no OpenTelemetry: these checks import neither.
#   bash benchmarks/gpu_check.sh                         # on the GPU machine
#   DEVICE=cpu MODEL=tiny DTYPE=float32 bash benchmarks/gpu_check.sh   # dry run here
set -u
OUT=${OUT:-/tmp/hopscope-gpu}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-llama-1b}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" > "$OUT/versions.txt" 2>&1
HOPSCOPE_SKIP_KERNEL_BUILD=1 python -m pytest tests/gpu -q -p no:cacheprovider > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest tests/gpu exit $?" >> "$OUT/pytest_gpu.txt"
python -m benchmarks.engine_bench --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
  --batch-sizes 1,8,32,128 --repeats 3 --out "$OUT/engine_${DEVICE}.json" > "$OUT/engine_${DEVICE}.log" 2>&1
echo "engine_bench exit $?" >> "$OUT/engine_${DEVICE}.log"
tail -n 3 "$OUT"/*.txt "$OUT"/*.log
