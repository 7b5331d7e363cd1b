"""Stage 1 with the CLIP position embeddings initialised as fixed-scale 2D sin-cos (MAE-style) instead of
random, then the position probe: does patch position survive to layer -2?
    python clip_sincos.py STEPS OUT_DIR [SCALE]"""
import sys, torch
from vlprune.testbed import train
from position_probe import train_clip_and_probe
torch.set_num_threads(2); torch.manual_seed(0)
steps, out, scale = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
spec = train.TestbedSpec()
tok = train.make_tokenizer(); ctok = train.make_clip_tokenizer(); proc = train.make_processor(spec, tok)
clip = train.make_clip(spec, len(tok))
d, g = spec.vision_width, spec.grid
ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
freq = 1.0 / (100 ** (torch.arange(d // 4) / (d // 4)))
pe = torch.cat([f(p.flatten()[:, None].float() * freq) for p in (xs, ys) for f in (torch.sin, torch.cos)], 1)
with torch.no_grad():
    w = clip.vision_model.embeddings.position_embedding.weight
    w.zero_(); w[1:] = scale * pe
train_clip_and_probe(clip, spec, ctok, proc, steps, out)
