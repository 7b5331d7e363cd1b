"""Issue 22 item 4, second attempt: stage 1b trains only the CLIP tower's last block (the block LLaVA's layer -2
features never pass through) with the token-wise term on its decoupled q-q patches, then measures the CLIP rows of
``vlprune testbed signals`` on val, plus the quantities FCMA (DeSAP eq. 3) multiplies: alpha_i = cos(patch_i, EOS)
and the mean patch-word cosine. Also checks that LLaVA's layer -2 features are unchanged.
    python tools/testbed_experiments/retune_last_block.py W STEPS LR TRAIN_TEXT [N_VAL] [THREADS]"""
import json
import sys
import time
from pathlib import Path

import torch

from transformers import CLIPModel

from vlprune.evaluation import load_model
from vlprune.testbed import clip_dir, load_split
from vlprune.testbed.clip_stage import retune_last_block
from vlprune.testbed.components import TestbedSpec
from vlprune.testbed.signals import KS, compute_signals, signal_report

weight, steps, lr, train_text = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
n_val = int(sys.argv[5]) if len(sys.argv) > 5 else 500
torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 2)
tag = f"w{weight:g}_s{steps}_lr{lr:g}_t{int(train_text)}"
out = Path(f"/tmp/retune/{tag}")
out.mkdir(parents=True, exist_ok=True)
spec = TestbedSpec()
clip = CLIPModel.from_pretrained(clip_dir()).eval()

from vlprune.testbed.train import make_clip_tokenizer, make_processor, make_tokenizer  # noqa: E402
clip_tok = make_clip_tokenizer()
processor = make_processor(spec, make_tokenizer())
t0 = time.perf_counter()
summary = retune_last_block(clip, spec, clip_tok, processor.image_processor, steps, lr, weight, 0, train_text,
                            log=lambda m: print(m, flush=True))
print(f"stage 1b in {time.perf_counter() - t0:.0f} s: {summary}", flush=True)
clip.save_pretrained(out)
clip_tok.save_pretrained(out)

loaded = load_model("testbed")
tower = loaded.model.model.vision_tower
samples = load_split("val", n_val)
enc = loaded.processor(images=[s.image for s in samples[:8]], text=[s.prompt for s in samples[:8]],
                       return_tensors="pt", padding=True)
before = tower(pixel_values=enc["pixel_values"], output_hidden_states=True).hidden_states[-2]
vis = {k[len("vision_model."):]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}
tower.load_state_dict(vis)
after = tower(pixel_values=enc["pixel_values"], output_hidden_states=True).hidden_states[-2]
print("layer -2 features unchanged:", torch.equal(before, after))
loaded.clip = str(out)
scores, target = compute_signals(loaded, samples, 25)
blocks = loaded.model.config.vision_config.num_hidden_layers
report = signal_report(scores, target, KS, loaded.model.config.vision_feature_layer % (blocks + 1) - 1)
rows = [r for r in report["rows"] if not r["signal"].startswith("llm.")]
(out / "signals_val.json").write_text(json.dumps({"weight": weight, "steps": steps, "lr": lr,
                                                  "train_text": train_text, "summary": summary,
                                                  "n": report["n"], "rows": rows}, indent=2) + "\n")
print(f"{tag}: CLIP signals on {report['n']} val questions")
for r in rows:
    print(f"{r['signal']:<20} AUC {r['auc']:.3f}  " + "  ".join(f"R@{k} {r[f'recall@{k}']:.3f}" for k in KS))
