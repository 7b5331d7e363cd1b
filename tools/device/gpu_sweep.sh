#!/usr/bin/env bash
# Testbed stage-2 recipe sweep (issue 3): 8 time-boxed runs side by side on one lent GPU, 2 CPU threads each.
# Usage on the device machine, repo root: tools/device/gpu_sweep.sh MINUTES SWEEP   (logs: $OUT/NAME.log)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
MIN=${1:-8}; SWEEP=${2:-1}
S=tools/testbed_experiments/gpu_stage2.py
case $SWEEP in
1) CONFIGS=(
  'base45 4500 {}'
  't12_45 4500 {"turns":12}'
  'base_long 40000 {}'
  't12_long 40000 {"turns":12}'
  't12_lr4 4500 {"turns":12,"llava_lr":0.004}'
  't12_wide 4500 {"turns":12,"llm_width":256,"llm_heads":8,"llm_ffn":768}'
  't12_b16 9000 {"turns":12,"llava_batch":16}'
  't12_L6 4500 {"turns":12,"llm_layers":6}') ;;
*) CONFIGS=("${@:3}") ;;
esac
for c in "${CONFIGS[@]}"; do
  read -r name steps spec <<<"$c"
  python3 $S "$name" "$MIN" "$steps" "$spec" > /tmp/$name.out 2>&1 &
done
wait
grep -h "ms/step\|FINAL" $OUT/*.log
tail -n 3 /tmp/*.out | grep -v "Loading weights" | tail -n 40
