"""Is an object patch's column / row linearly decodable from what the LLM receives (the projector output of a
saved testbed) and from the frozen CLIP features before it?   python position_probe.py [CHECKPOINT_DIR]"""
import sys
import torch, torch.nn.functional as F
from transformers import LlavaForConditionalGeneration
from vlprune.testbed import checkpoint_dir, scenes, train
torch.set_num_threads(2); torch.manual_seed(0)
path = sys.argv[1] if len(sys.argv) > 1 else checkpoint_dir()
model = LlavaForConditionalGeneration.from_pretrained(path).eval()
spec = train.TestbedSpec(); proc = train.make_image_processor(spec)
S = [scenes.make_scene(5_000_000 + i, 96) for i in range(1500)]
with torch.no_grad():
    feats = train.vision_features(model, train.pixels([s.image for s in S], proc))
    proj = model.model.multi_modal_projector(feats)
col, row, obj = torch.full((len(S), 144), -1), torch.full((len(S), 144), -1), torch.zeros(len(S), 144, dtype=torch.bool)
for i, s in enumerate(S):
    for o in s.objects:
        x0, y0, x1, y1 = [v // 8 for v in o.box]
        for yy in range(y0, y1):
            for xx in range(x0, x1):
                col[i, yy * 12 + xx], row[i, yy * 12 + xx], obj[i, yy * 12 + xx] = xx, yy, True
def probe(X, y):
    n = len(y); tr = torch.arange(n) < int(0.8 * n)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-5; X = (X - mu) / sd
    m = torch.nn.Linear(X.shape[1], 12); opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(300):
        loss = F.cross_entropy(m(X[tr]), y[tr]); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        pred = m(X[~tr]).argmax(-1)
    return round((pred == y[~tr]).float().mean().item(), 3), round((pred - y[~tr]).abs().float().mean().item(), 2)
with torch.no_grad():
    hs = model.model.vision_tower(train.pixels([s.image for s in S], proc), output_hidden_states=True).hidden_states
for name, X in [(f"CLIP hidden_states[{k}]", h[:, 1:]) for k, h in enumerate(hs)] + [("projector out", proj)]:
    Xo = X[obj]
    print(name, "column (acc, mean |error| in cells)", probe(Xo, col[obj]), "row", probe(Xo, row[obj]))
