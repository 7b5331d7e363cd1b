"""How many zero tokens HoloV's official overflow rule hands the LLM on the testbed's first 200 test images
(docs/methods/holov.md)."""
import torch
from vlprune import testbed
from vlprune.models.clip_signals import ClipVisionSignals
from vlprune.methods import holov
model, processor, samples = testbed.load("test", n=200)
imgs = [s.image for s in samples]
px = processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
tower = model.model.vision_tower
with torch.no_grad():
    src = ClipVisionSignals(tower, px, -2, grid=(12, 12), projector=model.model.multi_modal_projector)
    for k in (16, 32, 48):
        sel = holov.select(src, k, holov.HoloVConfig())
        short = [k - len(ix) for ix in sel.indices]
        print(k, "images with zero tokens:", sum(1 for s in short if s), "of", len(short), "mean zeros:", sum(short) / len(short))
