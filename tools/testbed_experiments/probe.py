import sys, torch, torch.nn.functional as F
torch.set_num_threads(1); torch.manual_seed(0)
from transformers import CLIPModel
from vlprune.testbed import scenes, train
clip = CLIPModel.from_pretrained(sys.argv[1]).eval()
layer = int(sys.argv[2]) if len(sys.argv) > 2 else -2
spec = train.TestbedSpec(); proc = train.make_image_processor(spec)
S = [scenes.make_scene(5_000_000 + i, 96) for i in range(1500)]
with torch.no_grad():
    feats = []
    for i in range(0, len(S), 250):
        hs = clip.vision_model(pixel_values=train.pixels([s.image for s in S[i:i+250]], proc), output_hidden_states=True).hidden_states
        feats.append(hs[layer][:, 1:])
    feats = torch.cat(feats)
X, yc, ys = [], [], []
cols, shps = list(scenes.COLORS), list(scenes.SHAPES)
for i, s in enumerate(S):
    lab = torch.full((144,), -1); labs = torch.full((144,), -1)
    for o in s.objects:
        x0, y0, x1, y1 = [v // 8 for v in o.box]
        for yy in range(y0, y1):
            for xx in range(x0, x1):
                lab[yy * 12 + xx] = cols.index(o.color); labs[yy * 12 + xx] = shps.index(o.shape)
    X.append(feats[i]); yc.append(lab); ys.append(labs)
X = torch.cat(X); yc = torch.cat(yc); ys = torch.cat(ys)
obj = yc >= 0
print("object patches", obj.sum().item(), "of", len(yc))
def probe(X, y, hidden=0):
    n = len(y); tr = torch.arange(n) < int(0.8 * n)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-5; X = (X - mu) / sd
    m = torch.nn.Linear(X.shape[1], int(y.max()) + 1) if not hidden else torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, int(y.max()) + 1))
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(300):
        loss = F.cross_entropy(m(X[tr]), y[tr]); opt.zero_grad(); loss.backward(); opt.step()
    return (m(X[~tr]).argmax(-1) == y[~tr]).float().mean().item()
Xo = X[obj]
print("color lin", probe(Xo, yc[obj]), "shape lin", probe(Xo, ys[obj]), "shape mlp", probe(Xo, ys[obj], 256))
print("is-object lin", probe(X, obj.long()))
