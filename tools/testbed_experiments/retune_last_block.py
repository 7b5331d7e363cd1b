"""Issue 22 item 4, second attempt: stage 1b trains only the CLIP tower's last block (the block LLaVA's layer -2
features never pass through) with the token-wise term on its decoupled q-q patches, then measures the CLIP rows of
``vlprune testbed signals`` on val (the new tower in the bundled LLaVA). Also checks that LLaVA's layer -2 features
are unchanged, so adopting it would not need a rebuild. JSON under /tmp/retune/TAG/.
    python tools/testbed_experiments/retune_last_block.py W STEPS LR TRAIN_TEXT [N_VAL] [THREADS]"""
import json
import sys
import time
from pathlib import Path

import torch
from clip_signals import bundled_with_clip, clip_rows, print_rows
from transformers import CLIPModel

from vlprune.testbed import clip_dir, load_split
from vlprune.testbed.clip_stage import retune_last_block, vision_weights
from vlprune.testbed.components import TestbedSpec, make_clip_tokenizer, make_processor, make_tokenizer

weight, steps, lr, train_text = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
n_val = int(sys.argv[5]) if len(sys.argv) > 5 else 500
torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 2)
tag = f"w{weight:g}_s{steps}_lr{lr:g}_t{int(train_text)}"
out = Path(f"/tmp/retune/{tag}")
out.mkdir(parents=True, exist_ok=True)
spec = TestbedSpec()
clip = CLIPModel.from_pretrained(clip_dir()).eval()
clip_tok = make_clip_tokenizer()
processor = make_processor(spec, make_tokenizer())
t0 = time.perf_counter()
summary = retune_last_block(clip, spec, clip_tok, processor.image_processor, steps, lr, weight, 0, train_text,
                            log=lambda m: print(m, flush=True))
print(f"stage 1b in {time.perf_counter() - t0:.0f} s: {summary}", flush=True)
clip.save_pretrained(out)
clip_tok.save_pretrained(out)

loaded = bundled_with_clip(None)
tower = loaded.model.model.vision_tower
samples = load_split("val", 8)
enc = loaded.processor(images=[s.image for s in samples], text=[s.prompt for s in samples], return_tensors="pt",
                       padding=True)
with torch.no_grad():
    before = tower(pixel_values=enc["pixel_values"], output_hidden_states=True).hidden_states[-2]
    tower.load_state_dict(vision_weights(clip))
    after = tower(pixel_values=enc["pixel_values"], output_hidden_states=True).hidden_states[-2]
print("layer -2 features unchanged:", torch.equal(before, after))
result = clip_rows(str(out), n_val)
(out / "signals_val.json").write_text(json.dumps({"weight": weight, "steps": steps, "lr": lr,
                                                  "train_text": train_text, "summary": summary, **result},
                                                 indent=2) + "\n")
print_rows(tag, result)
