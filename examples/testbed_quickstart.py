"""Prune, answer and look at what was kept, on the bundled testbed (runs on a CPU in a few seconds)."""
import vlprune
from vlprune import testbed
from vlprune.viz import kept_overlay, with_legend

model, processor, samples = testbed.load(n=1)                 # trained tiny LLaVA + 144-patch scenes
s = samples[0]
inputs = processor(images=s.image, text=s.prompt, return_tensors="pt")
with vlprune.pruned(model, "desap", 16, processor=processor, clip=testbed.clip_dir()):   # 16 of 144 tokens
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
print(s.question, "->", answer, "| truth:", s.answer)
kept = vlprune.last_selection(model)                           # still readable after the block
with_legend(kept_overlay(s.image, kept.indices[0], kept.grids[0], boxes=s.boxes)).save("kept.png")
