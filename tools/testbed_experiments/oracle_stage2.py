"""Stage 2 of the current recipe on oracle features (one-hot colour/shape/size/object codes + noise per patch).

    python oracle_stage2.py CLIP_DIR OUT STEPS [json spec]
"""
import sys, json, torch
from dataclasses import replace
from vlprune.testbed import train
from oracle_features import oracle_features
torch.set_num_threads(2)
orig = train.ConversationPool.__init__
def init(self, model, spec, ip, n, batch_size=256):
    orig(self, model, spec, ip, n, batch_size)
    self.feats[:] = oracle_features([smp.objects for smp in self.samples], spec.vision_width)
train.ConversationPool.__init__ = init
clip_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
spec = replace(train.TestbedSpec(), val_probe=0, val_n=0, **kw)
r = train.build(out, clip_dir=clip_dir, llava_steps=steps, spec=spec, progress=False, log_file=out + ".log")
