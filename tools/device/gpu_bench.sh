#!/usr/bin/env bash
# GPU rows of docs/speed.md (issue 6): the full 7B shapes with random weights, bf16, on one lent GPU.
# Run from the repo root on a GPU machine whose python3 has torch with CUDA. A machine without network gets
# transformers from wheels in .whl/ (fetch them where there is network:
#   pip download --no-deps -d .whl transformers==5.23.0 typer
# ); with network, or with vlprune installed, .whl/ can be absent. Results land as JSON under $OUT (default out/gpu).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, typer; print('torch', torch.__version__, 'transformers', transformers.__version__, 'typer', typer.__version__)"
vlprune() { python3 -c 'import sys; sys.argv[0] = "vlprune"; from vlprune.cli import main; main()' "$@"; }
M=none,desap,vispruner,visionzip,fastv,random,visiondrop,asap
run() { echo "== vlprune bench $*"; local t=$SECONDS; vlprune bench "$@"; echo "== took $((SECONDS - t)) s"; }
run --model llava-1.5-7b --dtype bf16 --batch 1 --device cuda --methods $M --keep 64,128,192 --repeats 20 --warmup 3 \
  --json $OUT/bench_llava-1.5-7b_cuda_b1.json
run --model llava-1.5-7b --dtype bf16 --batch 8 --device cuda --methods $M --keep 64,128,192 --repeats 10 --warmup 2 \
  --json $OUT/bench_llava-1.5-7b_cuda_b8.json
run --model llava-next-7b --dtype bf16 --batch 1 --device cuda --methods none,desap,vispruner,visionzip,fastv,random \
  --keep 320,640,960 --repeats 10 --warmup 2 --json $OUT/bench_llava-next-7b_cuda_b1.json
run --model qwen2.5-vl-7b --dtype bf16 --batch 1 --device cuda --methods none,desap,vispruner,visionzip,fastv,random \
  --keep 128,256,384 --repeats 10 --warmup 2 --json $OUT/bench_qwen2.5-vl-7b_cuda_b1.json
