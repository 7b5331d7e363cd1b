import time, random, math, torch
from vlprune.testbed import train, scenes
from oracle_features import oracle_features
from dataclasses import replace
torch.set_num_threads(2); torch.manual_seed(0)
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="")       # path or '' for random
ap.add_argument("--n", type=int, default=8000)
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--width", type=int, default=128)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--ffn", type=int, default=384)
ap.add_argument("--turns", type=int, default=6)
ap.add_argument("--describe", type=float, default=0.0)
ap.add_argument("--layer", type=int, default=-2)
ap.add_argument("--oracle", type=int, default=0)
ap.add_argument("--curr", type=float, default=0.0)
a = ap.parse_args()
spec = replace(train.TestbedSpec(), llm_width=a.width, llm_layers=a.layers, llm_ffn=a.ffn, llava_batch=a.batch)
tok = train.make_tokenizer(padding_side="right")
proc = train.make_processor(spec, tok)
from transformers import CLIPModel
clip = CLIPModel.from_pretrained(a.clip) if a.clip else train.make_clip(spec, len(tok))
clip.eval()
model = train.make_llava(spec, len(tok), clip.config.vision_config)
model.model.vision_tower.load_state_dict(train.vision_weights(clip))
t0 = time.time()
convs = []
for i in range(a.n):
    r = random.Random(f"turns-{i}")
    convs.append(scenes.make_conversation(i, scenes.FAMILIES[i % 5], 96, a.turns, min(1.0, i / (a.curr * a.n)) if a.curr else 1.0, describe_turn=r.random() < a.describe))
feats = torch.empty(a.n, 144, spec.vision_width)
with torch.no_grad():
    for s in range(0, 0 if a.oracle else a.n, 256):
        pix = proc.image_processor(images=[c[0].image for c in convs[s:s+256]], return_tensors="pt")["pixel_values"]
        hs = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[a.layer][:, 1:]
        feats[s:s+256] = hs
if a.oracle:
    feats[:] = oracle_features([c[0].objects for c in convs], spec.vision_width)
print("features", time.time() - t0, flush=True)
# projector init: centre + scale
mu = feats.reshape(-1, feats.shape[-1]).mean(0); sd = (feats - mu).pow(2).mean().sqrt()
with torch.no_grad():
    lin = model.model.multi_modal_projector.linear_1
    w = torch.randn_like(lin.weight) / math.sqrt(lin.in_features)
    lin.weight.copy_(w / sd); lin.bias.copy_(-(w / sd) @ mu)
texts = [train.conversation_text(t) for _, t in convs]
model.train()
params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")]
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.05)
emb = model.get_input_embeddings()
asst, colon = tok.convert_tokens_to_ids("assistant"), tok.convert_tokens_to_ids(":")
def batch(idx):
    enc = tok([texts[i].replace("<image>", "<image>" * 144) for i in idx], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    starts = torch.zeros_like(ids, dtype=torch.bool); starts[:, 2:] = (ids[:, :-2] == asst) & (ids[:, 1:-1] == colon)
    seg = starts.long().cumsum(-1)  # which reply
    eos = (ids == train.EOS_ID).long()
    # inside reply: after a start and up to (incl) next EOS
    ends_before = torch.cat([torch.zeros_like(eos[:, :1]), eos[:, :-1]], 1).cumsum(-1)
    inside = (seg > 0) & (ends_before < seg)
    labels = torch.where(inside & (mask > 0), ids, -100)
    first = starts.long().argmax(-1)
    return ids, mask, labels, first
def fam_of(i): return scenes.FAMILIES[i % 5]
t0 = time.time(); ema = {}
for step in range(a.steps):
    lr = a.lr * min(1, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
    for g in opt.param_groups: g["lr"] = lr
    idx = [(step * a.batch + k) % a.n for k in range(a.batch)]
    ids, mask, labels, first = batch(idx)
    x = emb(ids.clamp(max=emb.num_embeddings - 1))
    img = model.model.multi_modal_projector(feats[idx])
    x = x.masked_scatter((ids == train.IMAGE_ID)[..., None], img.to(x.dtype))
    out = model(inputs_embeds=x, attention_mask=mask, labels=labels)
    opt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    with torch.no_grad():
        r = torch.arange(len(idx)); ok = (out.logits[r, first - 1].argmax(-1) == labels[r, first]).float()
        for k, i in enumerate(idx):
            f = fam_of(i); ema[f] = 0.98 * ema.get(f, 0.2) + 0.02 * ok[k].item()
    if step % 100 == 0 or step == a.steps - 1:
        print(step, f"{time.time()-t0:.0f}s loss {out.loss.item():.3f}", {k: round(v, 2) for k, v in sorted(ema.items())}, flush=True)
# val with real pipeline
model.eval()
from vlprune.testbed.evaluate import evaluate
proc.tokenizer.padding_side = "left"
val = scenes.load_split("val", 250)
print("VAL", evaluate(model, proc, val), flush=True)
