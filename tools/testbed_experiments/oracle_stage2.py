"""Stage 2 of the current recipe on oracle features (one-hot colour/shape/size/object codes + noise per patch).

    python oracle_stage2.py CLIP_DIR OUT STEPS [json spec]
"""
import sys, json, torch
from dataclasses import replace
from vlprune.testbed import train, scenes
torch.set_num_threads(2)
orig = train.ConversationPool.__init__
def init(self, model, spec, ip, n, batch_size=256):
    orig(self, model, spec, ip, n, batch_size)
    g = torch.Generator().manual_seed(0)
    P = torch.randn(6 + 5 + 2 + 1, spec.vision_width, generator=g)
    cols, shps, szs = list(scenes.COLORS), list(scenes.SHAPES), list(scenes.SIZES)
    for i, smp in enumerate(self.samples):
        f = torch.zeros(144, 14)
        for o in smp.objects:
            x0, y0, x1, y1 = [v // 8 for v in o.box]
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    p = yy * 12 + xx
                    f[p, cols.index(o.color)] = 1; f[p, 6 + shps.index(o.shape)] = 1; f[p, 11 + szs.index(o.size)] = 1; f[p, 13] = 1
        self.feats[i] = f @ P + 0.1 * torch.randn(144, spec.vision_width, generator=g)
train.ConversationPool.__init__ = init
clip_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
spec = replace(train.TestbedSpec(), val_probe=0, val_n=0, **kw)
r = train.build(out, clip_dir=clip_dir, llava_steps=steps, spec=spec, progress=False, log_file=out + ".log")
