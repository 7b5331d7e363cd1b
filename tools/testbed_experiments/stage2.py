import sys, json
from dataclasses import replace
from vlprune.testbed import train
clip_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
spec = replace(train.TestbedSpec(), val_probe=100, val_every=250, **kw)
r = train.build(out, clip_dir=clip_dir, llava_steps=steps, spec=spec, val_n=250, progress=False, log_file=out + ".log")
print({k: v for k, v in r.items() if k != "spec"})
