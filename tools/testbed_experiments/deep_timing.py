"""Timing run of the deep-testbed recipe: 6-layer LLM deepened from the bundled checkpoint, its CLIP reused,
a 512-scene pool and 30 stage-2 steps (watch the step with py-spy; the session's run used --llm-init-mode split).
    python tools/testbed_experiments/deep_timing.py [identity|split]"""
import sys
import time
from dataclasses import replace

import torch

from vlprune.testbed import checkpoint_dir, train

torch.set_num_threads(2)
t0 = time.time()
spec = replace(train.TestbedSpec(), llm_layers=6, pool=512, val_probe=0)
r = train.build("/tmp/deep_time", spec=spec, clip_dir=checkpoint_dir() / "clip", llm_init=checkpoint_dir(),
                llm_init_mode=sys.argv[1] if len(sys.argv) > 1 else "split", progress=False, val_n=0, llava_steps=30)
print({k: v for k, v in r.items() if k.startswith("time")}, "per step", r["time_llava_s"] / 30)
