"""Issue 22 item 4: why DeSAP's FCMA (eq. 3) does not follow the plain decoupled cosine on a CLIP trained with the
decoupled token-wise term. FCMA weighs each patch-word cosine m_ij by MV_ij + MT_ij; with lambda = 0.1 the two
softmaxes are nearly uniform (1/T over words, 1/N over patches), so A_t ~ sum_j (alpha_i + beta_j) m_ij / (N T^2):
the cosine weighted by alpha_i = cos(patch_i, EOS) + beta_j = cos(word_j, v_s), a weight that can change sign. This prints, on val questions naming an
object, the patch AUC of FCMA, of the plain cosine, of alpha, and of that near-uniform approximation, plus how
often the cosines and weights are negative.
    python tools/testbed_experiments/fcma_terms.py [CLIP_DIR] [N_VAL]    # default: the bundled CLIP"""
import json
import sys

import torch
import torch.nn.functional as F
from clip_signals import bundled_with_clip

from vlprune.evaluation import method_kwargs
from vlprune.methods.desap import fine_grained_alignment, plain_alignment
from vlprune.models.clip_signals import ClipVisionSignals
from vlprune.testbed import load_split
from vlprune.testbed.answer import boxes_to_patch_mask
from vlprune.testbed.signals import patch_auc
from vlprune.text import questions_from_ids

clip_path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
n_val = int(sys.argv[2]) if len(sys.argv) > 2 else 500
torch.set_num_threads(2)
loaded = bundled_with_clip(clip_path)  # only the CLIP-side signals below are read
model, proc = loaded.model, loaded.processor
clip_text = method_kwargs("desap", loaded)["clip"]
samples = [s for s in load_split("val", n_val) if s.boxes]
vc = model.config.vision_config
grid = vc.image_size // vc.patch_size
proc.tokenizer.padding_side = "left"
auc: dict[str, list] = {}
stats: dict[str, list] = {}
with torch.no_grad():
    for i in range(0, len(samples), 25):
        chunk = samples[i:i + 25]
        enc = proc(images=[s.image for s in chunk], text=[s.prompt for s in chunk], return_tensors="pt",
                   padding=True)
        questions = questions_from_ids(enc["input_ids"], enc["attention_mask"], model.config.image_token_id,
                                       proc.tokenizer)
        text, mask, eos = clip_text.encode(questions)
        joint = ClipVisionSignals(model.model.vision_tower, enc["pixel_values"], model.config.vision_feature_layer,
                                  clip_text=clip_text).decoupled("qq")
        a = F.normalize(joint[:, 1:].float(), dim=-1)
        s = F.normalize(text.float(), dim=-1)
        valid = mask.bool().unsqueeze(1)
        m = (a @ s.transpose(1, 2)).masked_fill(~valid, 0.0)                      # (B, N, T)
        alpha = (a @ F.normalize(eos.float(), dim=-1).unsqueeze(-1)).squeeze(-1)    # (B, N)
        beta = (s @ F.normalize(joint[:, 0].float(), dim=-1).unsqueeze(-1)).squeeze(-1).masked_fill(~mask.bool(), 0)
        uniform = ((alpha.unsqueeze(-1) + beta.unsqueeze(1)) * m).sum(-1)           # lambda -> 0 limit, up to a constant
        target = torch.stack([boxes_to_patch_mask(x.boxes, vc.image_size, grid) for x in chunk])
        rows = {"fcma (DeSAP A_t)": fine_grained_alignment(joint[:, 1:], joint[:, 0], text, eos, mask, 0.1),
                "plain cosine": plain_alignment(joint[:, 1:], text, mask), "alpha = cos(patch, EOS)": alpha,
                "fcma, lambda -> 0 limit": uniform}
        for k, v in rows.items():
            auc.setdefault(k, []).append(patch_auc(v, target))
        mv = m[valid.expand_as(m)]
        stats.setdefault("patch-word cosine: mean", []).append(mv.mean().reshape(1))
        stats.setdefault("patch-word cosine: share < 0", []).append((mv < 0).float().mean().reshape(1))
        stats.setdefault("alpha: mean", []).append(alpha.mean().reshape(1))
        stats.setdefault("alpha: share < 0", []).append((alpha < 0).float().mean().reshape(1))
        stats.setdefault("beta: mean", []).append(beta[mask.bool()].mean().reshape(1))
        weight = (alpha.unsqueeze(-1) + beta.unsqueeze(1))[valid.expand_as(m)]
        stats.setdefault("alpha_i + beta_j: share < 0", []).append((weight < 0).float().mean().reshape(1))
        fc = rows["fcma (DeSAP A_t)"]
        stats.setdefault("corr(fcma, limit) per image", []).append(torch.stack(
            [torch.corrcoef(torch.stack([fc[b], uniform[b]]))[0, 1] for b in range(len(chunk))]).mean().reshape(1))
out = {"clip": clip_path or "bundled", "n": len(samples)}
for k, v in auc.items():
    x = torch.cat(v)
    out[f"AUC {k}"] = round(float(x[~x.isnan()].mean()), 3)
for k, v in stats.items():
    out[k] = round(float(torch.cat(v).mean()), 3)
print(json.dumps(out, indent=1))
