"""How much each decoder layer of a testbed LLM changes the residual stream (did the deepened layers learn to do
anything?): mean ||h_out - h_in|| / ||h_in|| per layer, over the image tokens and over the last prompt token, on
the first N val questions.
    python tools/testbed_experiments/layer_updates.py [MODEL] [N]      # MODEL: testbed-deep (default), testbed, DIR"""
import sys

import torch

from vlprune.evaluation import load_model
from vlprune.testbed import load_split

name = sys.argv[1] if len(sys.argv) > 1 else "testbed-deep"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
loaded = load_model(name)
model, proc = loaded.model, loaded.processor
proc.tokenizer.padding_side = "left"
samples = load_split("val", n)
img_id = model.config.image_token_id
layers = model.model.language_model.layers
sums = [[0.0, 0.0, 0] for _ in layers]
seen: dict[int, torch.Tensor] = {}


def hook(j):
    def record(module, args, kwargs, out):
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = out[0] if isinstance(out, tuple) else out
        seen[j] = (h_out - h_in).norm(dim=-1) / h_in.norm(dim=-1).clamp_min(1e-6)
    return record


handles = [layer.register_forward_hook(hook(j), with_kwargs=True) for j, layer in enumerate(layers)]
with torch.no_grad():
    for i in range(0, n, 25):
        chunk = samples[i:i + 25]
        enc = proc(text=[s.prompt for s in chunk], images=[s.image for s in chunk], return_tensors="pt", padding=True)
        model(**enc)
        is_img = enc["input_ids"] == img_id
        for j, rel in seen.items():
            sums[j][0] += float(rel[is_img].mean()) * len(chunk)
            sums[j][1] += float(rel[:, -1].mean()) * len(chunk)
            sums[j][2] += len(chunk)
for h in handles:
    h.remove()
print(f"{name}: relative update ||h_out - h_in|| / ||h_in|| per decoder layer ({n} val questions)")
print("layer  image tokens  last token")
for j, (a, b, c) in enumerate(sums):
    print(f"{j:>5}  {a / c:12.3f}  {b / c:10.3f}")
