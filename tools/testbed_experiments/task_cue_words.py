"""Is DeSAP's task cue at chance on the testbed because of the CLIP or because of the question's filler words?
Patch AUC of the decoupled-attention cosine (DeSAP's "De-Simi", pair P) to: all question tokens (what DeSAP
uses; = `desap.P.cosine` of `vlprune testbed signals`), the content words only (colours, shapes, sizes, places),
and the best-matching content word. Also the ordinary last-block patch embeddings (what the FILIP term trained).
    python tools/testbed_experiments/task_cue_words.py [N] [P]"""
import sys

import torch
import torch.nn.functional as F

from vlprune.evaluation import load_model, method_kwargs
from vlprune.models.clip_signals import ClipVisionSignals
from vlprune.testbed import boxes_to_patch_mask, load_split
from vlprune.testbed.signals import patch_auc
from vlprune.testbed.train import content_word_ids
from vlprune.text import questions_from_ids

torch.set_num_threads(2)
n, mode = (int(sys.argv[1]) if len(sys.argv) > 1 else 200), (sys.argv[2] if len(sys.argv) > 2 else "qq")
loaded = load_model("testbed")
model, proc = loaded.model, loaded.processor
clip_text = method_kwargs("desap", loaded)["clip"]
content = content_word_ids(clip_text.tokenizer)
samples = [s for s in load_split("val", n) if s.boxes]
out = {k: [] for k in ("all tokens", "content words", "best content word", "plain patches, content words")}
targets = []
with torch.no_grad():
    for i in range(0, len(samples), 25):
        chunk = samples[i:i + 25]
        enc = proc(images=[s.image for s in chunk], text=[s.prompt for s in chunk], return_tensors="pt", padding=True)
        tower = model.model.vision_tower
        src = ClipVisionSignals(tower, enc["pixel_values"], model.config.vision_feature_layer, clip_text=clip_text)
        joint = F.normalize(src.decoupled(mode)[:, 1:], dim=-1)
        hidden = tower(pixel_values=enc["pixel_values"], output_hidden_states=True).hidden_states[-1]
        plain = F.normalize(clip_text.visual_projection(tower.post_layernorm(hidden[:, 1:])), dim=-1)
        qs = questions_from_ids(enc["input_ids"], enc["attention_mask"], model.config.image_token_id, proc.tokenizer)
        text, mask, _ = clip_text.encode(qs)
        ids = clip_text.tokenizer(qs, padding=True, return_tensors="pt")["input_ids"]
        is_content = torch.isin(ids, content) & mask.bool()
        text = F.normalize(text, dim=-1)
        for name, patches in (("dec", joint), ("plain", plain)):
            m = patches @ text.transpose(1, 2)                                      # (B, N, T)
            c = is_content.unsqueeze(1).float()
            if name == "dec":
                out["all tokens"].append((m * mask.unsqueeze(1)).sum(-1) / mask.sum(-1, keepdim=True))
                out["content words"].append((m * c).sum(-1) / c.sum(-1).clamp(min=1))
                out["best content word"].append(m.masked_fill(c == 0, -2).amax(-1))
            else:
                out["plain patches, content words"].append((m * c).sum(-1) / c.sum(-1).clamp(min=1))
        targets += [boxes_to_patch_mask(s.boxes, 96, 12) for s in chunk]
target = torch.stack(targets)
print(f"{len(samples)} val questions with an object, pair {mode}")
for k, v in out.items():
    auc = patch_auc(torch.cat(v), target)
    print(f"{k:32s} AUC {auc[~auc.isnan()].mean():.3f}")
