"""A full stage 2 on a saved CLIP with a spec override: python candidate.py CLIP_DIR OUT STEPS '{json spec}'."""
import sys, json
from dataclasses import replace
from vlprune.testbed import train
clip_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = replace(train.TestbedSpec(), **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}))
r = train.build(out, clip_dir=clip_dir, llava_steps=steps, spec=spec, progress=False, log_file=out + ".log")
print({k: v for k, v in r.items() if k != "spec"})
