#!/usr/bin/env bash
# The transformers range on a lent GPU, in one call: the image's own transformers (5.17.0 on this workplace's
# H200 image: the pre-5.18 route, get_image_features replaced for one call) and 5.24.0 from .whl/. For each: the
# internals tests (on that machine's CPU, its torch), then LLaVA-1.5-7B (random weights, bf16, batch 8) on CUDA,
# every method at 64 tokens. Wheels (python 3.12), fetched here beforehand:
#   pip download --no-deps -d .whl transformers==5.24.0
#   pip download --no-deps -d .whl/typer typer==0.29.2 annotated-doc==0.0.7 pydantic==2.14.4 pydantic_core==2.50.5 \
#     typing-inspection==0.4.5 annotated-types==0.8.0     (python 3.12, manylinux x86_64: see the device README)
# SKIP_TESTS=1 runs the benches only.
# Results land as JSON under $OUT (default out/gpu).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
pipt() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pipt /tmp/site .whl/typer/*.whl || exit 1
pipt /tmp/site24 .whl/transformers-5.24.0-*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
vlprune() { python3 -c 'import sys; sys.argv[0] = "vlprune"; from vlprune.cli import main; main()' "$@"; }
for tf in image 5.24; do
  if [ "$tf" = image ]; then export PYTHONPATH=/tmp/site:$PWD; else export PYTHONPATH=/tmp/site24:/tmp/site:$PWD; fi
  python3 -c "import torch, transformers, typer; print('== torch', torch.__version__, 'transformers', transformers.__version__, 'typer', typer.__version__)"
  t=$SECONDS
  [ -n "${SKIP_TESTS:-}" ] || python3 -m pytest -q -p no:cacheprovider -x -n 8 -W ignore::FutureWarning tests/test_compat.py tests/test_core.py \
    tests/test_families.py tests/test_llm_methods.py tests/test_threads.py 2>&1 | tail -4
  echo "== tests took $((SECONDS - t)) s"
  t=$SECONDS
  vlprune bench --model llava-1.5-7b --dtype bf16 --batch 8 --device cuda \
    --methods none,desap,vispruner,visionzip,fastv,random,visiondrop,asap --keep 64 --repeats 10 --warmup 2 \
    --json "$OUT/bench_llava-1.5-7b_cuda_b8_tf$tf.json"
  echo "== bench took $((SECONDS - t)) s"
done
[ -n "${SKIP_TESTS:-}" ] || python3 tools/device/graph_check.py
