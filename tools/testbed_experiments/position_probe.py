"""Is an object patch's column / row linearly decodable from what the LLM receives (the projector output of a
saved testbed) and from the frozen CLIP features before it?
    python position_probe.py [CHECKPOINT_DIR]      (a LLaVA testbed; or --clip CLIP_DIR for a CLIP alone)"""
import sys
import torch, torch.nn.functional as F
from vlprune.testbed import boxes_to_patch_mask, checkpoint_dir, scenes, train


def linear_probe(X, y, classes=12):
    n = len(y); tr = torch.arange(n) < int(0.8 * n)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-5; X = (X - mu) / sd
    m = torch.nn.Linear(X.shape[1], classes); opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(300):
        loss = F.cross_entropy(m(X[tr]), y[tr]); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        pred = m(X[~tr]).argmax(-1)
    return round((pred == y[~tr]).float().mean().item(), 3), round((pred - y[~tr]).abs().float().mean().item(), 2)


def probe_positions(vision_model, projector=None, n=1500):
    """Print column / row probe accuracy (and mean error in cells) of object patches, per hidden state."""
    torch.manual_seed(0)
    proc = train.make_image_processor(train.TestbedSpec())
    S = [scenes.make_scene(5_000_000 + i, 96) for i in range(n)]
    with torch.no_grad():
        hs = vision_model(train.pixels([s.image for s in S], proc), output_hidden_states=True).hidden_states
        layers = [(f"CLIP hidden_states[{k}]", h[:, 1:]) for k, h in enumerate(hs)]
        if projector is not None:
            layers.append(("projector out", projector(hs[-2][:, 1:])))
    obj = torch.stack([boxes_to_patch_mask([o.box for o in s.objects], 96, 12) for s in S])
    col, row = (torch.arange(144) % 12).expand(n, 144), (torch.arange(144) // 12).expand(n, 144)
    for name, X in layers:
        print(name, "column (acc, mean |error| in cells)", linear_probe(X[obj], col[obj]),
              "row", linear_probe(X[obj], row[obj]), flush=True)


def train_clip_and_probe(clip, spec, tokenizer, processor, steps, out):
    """Stage 1 on ``clip`` (logged with wall time), save it to ``out``, then :func:`probe_positions` on it."""
    import time
    t0 = time.time()
    r = train.train_clip(clip, spec, tokenizer, processor.image_processor, steps, 0, progress=False,
                         log=lambda m: print(f"{time.time() - t0:.0f}s", m, flush=True))
    print(r, time.time() - t0, flush=True)
    clip.save_pretrained(out)
    probe_positions(clip.eval().vision_model)


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1:2] == ["--clip"]:
        from transformers import CLIPModel
        probe_positions(CLIPModel.from_pretrained(sys.argv[2]).eval().vision_model)
    else:
        from transformers import LlavaForConditionalGeneration
        model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else checkpoint_dir())
        model.eval()
        probe_positions(model.model.vision_tower, model.model.multi_modal_projector)
