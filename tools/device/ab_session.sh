#!/usr/bin/env bash
# Same-machine A/B of a change (issue 6): the code of a baseline commit vs the working tree, on one lent GPU.
# Before the run, here: rm -rf .ab && mkdir -p .ab/main && git archive BASE vlprune | tar -x -C .ab/main
# (.ab is in .git/info/exclude; carry it with .whl). Results: $OUT/ab.tgz (JSON + logs), $OUT/ab_summary.txt.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
ROOT=$PWD
bench() {  # VARIANT NAME ARGS...: VARIANT main (baseline tree) | new (graphs off) | graphs (graphs on)
  local v=$1 name=$2; shift 2
  local dir=$ROOT env=1
  [ "$v" = main ] && dir=$ROOT/.ab/main
  [ "$v" = new ] && env=0
  (cd "$dir" && VLPRUNE_CUDA_GRAPHS=$env PYTHONPATH=/tmp/site:$dir python3 -c \
    'import sys; sys.argv[0] = "vlprune"; from vlprune.cli import main; main()' bench "$@" \
    --json "$ROOT/ab/${v}_$name.json" > "$ROOT/ab/${v}_$name.log" 2>&1)
}
mkdir -p ab
L="--model llava-1.5-7b --dtype bf16 --device cuda --keep 64 --repeats 10 --warmup 3"
M=none,desap,vispruner,visionzip,fastv,random
for r in 1 2; do
  for v in main new graphs; do bench $v b8_r$r $L --batch 8 --methods $M; done
done
for v in main new graphs; do bench $v b1 $L --batch 1 --methods $M; done
N="--model llava-next-7b --dtype bf16 --device cuda --batch 1 --keep 640 --repeats 10 --warmup 3"
for v in main graphs; do bench $v next $N --methods none,desap,vispruner,visionzip,fastv; done
python3 - <<'PY' > $OUT/ab_summary.txt
import glob, json
for f in sorted(glob.glob("ab/*.json")):
    r = json.load(open(f))
    print(f.split("/")[-1], " ".join(f"{x['method']}={x['prefill_ms']:.1f}/{x['prune_ms']:.1f}" for x in r["results"]))
PY
tar czf $OUT/ab.tgz ab
cat $OUT/ab_summary.txt
