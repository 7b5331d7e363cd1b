import sys, time, torch
from dataclasses import replace
from vlprune.testbed import train
torch.set_num_threads(2); torch.manual_seed(0)
steps = int(sys.argv[1]); out = sys.argv[2]; tl = float(sys.argv[3]); lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
spec = replace(train.TestbedSpec(), token_loss=tl, clip_lr=lr)
tok = train.make_tokenizer(); ctok = train.make_clip_tokenizer(); proc = train.make_processor(spec, tok)
clip = train.make_clip(spec, len(tok))
t0 = time.time()
r = train.train_clip(clip, spec, ctok, proc.image_processor, steps, 0, progress=False, log=lambda m: print(f"{time.time()-t0:.0f}s", m, flush=True))
print(r, time.time() - t0)
clip.save_pretrained(out)
