#!/usr/bin/env bash
# Every GPU check of the engine in one call, for a session lent a GPU machine (the device tool runs
# it in the repository root; results go under $OUT). The GPU machine has torch and transformers
# but no Ray and no OpenTelemetry: these checks import neither. About 5-8 minutes on an H200;
# each part has its own time limit, the most important first, and each writes as it goes.
#   bash benchmarks/gpu_check.sh                                       # on the GPU machine
#   DEVICE=cpu MODEL=tiny DTYPE=float32 bash benchmarks/gpu_check.sh   # dry run here (1-2 min)
#
# 1. pytest tests/gpu: CUDA parity with transformers (float32), seeded sampling, replayed CUDA
#    graphs = the same steps uncaptured (float32 / bfloat16 / float16), graphs and --compile =
#    eager (tokens in float32, logits within rounding in bfloat16 / float16).
# 2. benchmarks.gpu_step (gpu_step.json): batch-1 and batch-32 decode steps with CUDA graphs off
#    and on vs the memory roofline and vs transformers generate; float32 / bfloat16 / float16;
#    --compile on and off. On CPU its CUDA-only parts are skipped and listed under "skipped".
# 3. benchmarks.engine_bench (engine_$DEVICE.json): decode tokens/s at several batch sizes and
#    prefill vs transformers generate, with CUDA graphs on.
set -u
OUT=${OUT:-/tmp/hopscope-gpu}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-llama-1b}
DTYPE=${DTYPE:-bfloat16}
PYTHON=${PYTHON:-python}
if [ "$DEVICE" = cpu ]; then GRAPHS=off; else GRAPHS=on; fi
mkdir -p "$OUT"
export HOPSCOPE_SKIP_KERNEL_BUILD=1  # CUDA runs torch ops; device time is scarce
start_s=$(date +%s)
stamp() { echo "[$(($(date +%s) - start_s)) s] $*" | tee -a "$OUT/summary.txt"; }

(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
$PYTHON -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" > "$OUT/versions.txt" 2>&1
$PYTHON -c "import triton; print('triton', triton.__version__)" >> "$OUT/versions.txt" 2>&1 \
  || echo "no triton: --compile on CUDA cannot run" >> "$OUT/versions.txt"

$PYTHON -c "import pytest" 2>/dev/null || stamp "no pytest here: part 1 cannot run (pip install pytest)"
stamp "pytest tests/gpu"
timeout 200 $PYTHON -m pytest tests/gpu -q -p no:cacheprovider -rs > "$OUT/pytest_gpu.txt" 2>&1
stamp "pytest tests/gpu exit $?"

stamp "gpu_step $MODEL $DEVICE $DTYPE"
timeout 300 $PYTHON -m benchmarks.gpu_step --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
  --out "$OUT/gpu_step.json" > "$OUT/gpu_step.log" 2>&1
stamp "gpu_step exit $?"

stamp "engine_bench $MODEL $DEVICE $DTYPE --cuda-graphs $GRAPHS"
timeout 120 $PYTHON -m benchmarks.engine_bench --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
  --cuda-graphs "$GRAPHS" --batch-sizes 1,8,32,128 --repeats 3 --out "$OUT/engine_${DEVICE}.json" \
  > "$OUT/engine_${DEVICE}.log" 2>&1
stamp "engine_bench exit $?"

tail -n 3 "$OUT"/*.txt "$OUT"/*.log
