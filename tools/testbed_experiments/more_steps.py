"""Continue stage 2 of a saved testbed for more steps (new cosine schedule): does more training fix the
families that stay near chance?  python more_steps.py IN_DIR OUT_DIR STEPS LR"""
import sys, json, time, torch
from dataclasses import replace
from transformers import AutoProcessor, LlavaForConditionalGeneration
from vlprune.testbed import train, scenes
from vlprune.testbed.evaluate import evaluate
torch.set_num_threads(2); torch.manual_seed(7)
src, out, steps, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
spec = replace(train.TestbedSpec(), llava_lr=lr, background_start=1.0, warmup=50, val_every=500, val_probe=100)
model = LlavaForConditionalGeneration.from_pretrained(src)
proc = AutoProcessor.from_pretrained(src)
pool = train.ConversationPool(model, spec, proc.image_processor, spec.pool)
t0 = time.time()
log = lambda m: print(f"[{time.time() - t0:7.1f}s] {m}", flush=True)
train.train_llava(model, spec, proc, pool, steps, 0, False, log)
log(f"val {json.dumps(evaluate(model, proc, scenes.load_split('val', 500)))}")
model.save_pretrained(out); proc.save_pretrained(out)
