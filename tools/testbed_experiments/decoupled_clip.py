"""Issue 22 item 4: does training the testbed CLIP's *decoupled* patches on the caption words (a FILIP term on the
last block's q-q attention output, DeSAP eq. 2) make DeSAP's task cue localise, as the papers say it does on real
CLIP? Stage 1 only (the shipped recipe plus ``decoupled_token_loss=W``), then the CLIP rows of
``vlprune testbed signals`` on val, the new CLIP's vision tower put into the bundled LLaVA (its LLM rows are
meaningless here and not printed). Decide on val; adopting it means rebuilding all three testbeds.
    python tools/testbed_experiments/decoupled_clip.py W [N_VAL] [THREADS] [G] [SEED]  # W = G = 0: shipped stage 1
G weights the global InfoNCE of the decoupled [CLS] row (DeSAP's v_s) against the captions."""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from clip_signals import clip_rows, print_rows

from vlprune.testbed.clip_stage import train_clip
from vlprune.testbed.train import TestbedSpec, make_clip, make_clip_tokenizer, make_processor, make_tokenizer

weight = float(sys.argv[1])
n_val = int(sys.argv[2]) if len(sys.argv) > 2 else 500
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
global_weight = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
out = Path(f"/tmp/decoupled_clip/w{weight:g}" + (f"_g{global_weight:g}" if global_weight else "")
           + (f"_seed{seed}" if seed else ""))
out.mkdir(parents=True, exist_ok=True)
spec = replace(TestbedSpec(), decoupled_token_loss=weight, decoupled_global_loss=global_weight)
torch.manual_seed(seed)
tok, clip_tok = make_tokenizer(), make_clip_tokenizer()
processor = make_processor(spec, tok)
clip = make_clip(spec, len(tok))
t0 = time.perf_counter()
summary = train_clip(clip, spec, clip_tok, processor.image_processor, spec.clip_steps, seed, progress=False,
                     log=lambda m: print(m, flush=True))
print(f"stage 1 in {time.perf_counter() - t0:.0f} s: {summary}", flush=True)
clip.save_pretrained(out)
clip_tok.save_pretrained(out)
result = clip_rows(str(out), n_val)
(out / "signals_val.json").write_text(json.dumps({"weight": weight, "global_weight": global_weight, "seed": seed,
                                                  "summary": summary, **result}, indent=2) + "\n")
print_rows(f"decoupled_token_loss={weight:g} decoupled_global_loss={global_weight:g}", result)
