"""Stage 1 with the patch-position term (`TestbedSpec.position_loss`), then the position probe: does patch
position survive to layer -2, and what does the term cost CLIP's contrastive accuracy?
    python clip_position.py STEPS OUT_DIR WEIGHT [THREADS]"""
import sys, torch
from dataclasses import replace
from vlprune.testbed import train
from position_probe import train_clip_and_probe
steps, out, weight = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2); torch.manual_seed(0)
spec = replace(train.TestbedSpec(), position_loss=weight)
tok = train.make_tokenizer(); ctok = train.make_clip_tokenizer(); proc = train.make_processor(spec, tok)
clip = train.make_clip(spec, len(tok))
train_clip_and_probe(clip, spec, ctok, proc, steps, out)
