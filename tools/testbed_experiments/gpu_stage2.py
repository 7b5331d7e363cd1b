"""Stage 2 of the testbed recipe on a GPU, time-boxed, for recipe sweeps (several run side by side on one GPU).

    python gpu_stage2.py NAME MINUTES STEPS '{json spec overrides}'   ->  $OUT/NAME.log

Uses the bundled checkpoint's CLIP (stage 1 unchanged). Times 40 steps on a copy first, then trains
min(STEPS, what fits in MINUTES) steps on the cosine schedule of that many steps, logs val probes (200
questions) every 1000 steps and the val accuracy (500 questions, per family) at the end.
"""
import copy, json, os, sys, time
from dataclasses import replace

import torch
from transformers import CLIPModel

from vlprune.testbed import checkpoint_dir, scenes, train
from vlprune.testbed.evaluate import evaluate

name, minutes, want = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
deadline = time.perf_counter() + 60 * minutes
spec = replace(train.TestbedSpec(), **{"val_probe": 200, "val_every": 1000, **kw})
torch.set_num_threads(2)
torch.manual_seed(0)
logf = open(os.path.join(os.environ.get("OUT", "/tmp"), f"{name}.log"), "a")
t0 = time.perf_counter()


def log(msg):
    logf.write(f"[{time.perf_counter() - t0:7.1f}s] {msg}\n")
    logf.flush()


log(f"{name} spec {json.dumps(kw)}")
tok = train.make_tokenizer()
proc = train.make_processor(spec, tok)
clip = CLIPModel.from_pretrained(checkpoint_dir() / "clip").eval()
torch.manual_seed(1)
model = train.make_llava(spec, len(tok), clip.config.vision_config)
model.model.vision_tower.load_state_dict(train.vision_weights(clip))
model = model.to("cuda" if torch.cuda.is_available() else "cpu")
pool = train.ConversationPool(model, spec, proc.image_processor, spec.pool)
train.init_projector(model, pool.feats[:256])
log(f"pool of {len(pool)} ready")
if spec.align_steps > 0:
    train.align_projector(model, spec, pool, train.attribute_word_ids(tok), spec.align_steps)
probe = copy.deepcopy(model)
t = time.perf_counter()
train.train_llava(probe, replace(spec, val_probe=0), proc, pool, 40, progress=False)
per_step = (time.perf_counter() - t) / 40
del probe
steps = max(100, min(want, int((deadline - time.perf_counter() - 60) / per_step)))
log(f"{per_step * 1000:.1f} ms/step -> {steps} steps (asked {want})")
train.train_llava(model, spec, proc, pool, steps, progress=False, log=log)
res = evaluate(model, proc, scenes.load_split("val", 500, image_size=spec.image_size))
log(f"FINAL {name} steps {steps} val {json.dumps(res)}")
print(f"FINAL {name} steps {steps} {json.dumps(kw)} val {json.dumps(res)}", flush=True)
