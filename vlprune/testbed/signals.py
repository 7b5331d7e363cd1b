"""How well each signal the pruning methods stand on finds the asked-about object (``vlprune testbed signals``).

A signal is one score per visual patch. Against the patches of the asked-about object (the sample's boxes) it is
judged as a detector: the patch AUC (Mann-Whitney, ties count one half, per image, then averaged) and the top-K
recall (share of the object's patches among the K highest scores). Signals:

- ``clip.cls.b{i}``: head-mean [CLS] -> patch attention of CLIP block ``i`` (VisionZip / VisPruner read the block
  that produces LLaVA's features, DeSAP's A_s the last block);
- ``desap.{qq,qk,kk,vv}.fcma`` / ``.cosine``: DeSAP's task cue A_t, the decoupled attention (eq. 2) of the block
  after the feature layer aligned with the question by FCMA (eq. 3) or by plain mean cosine (Table 5), computed by
  :func:`vlprune.methods.desap.select_from_signals`, the function the method runs;
- ``clip.patch_cosine``: mean cosine of the ordinary last-block patch embeddings (CLIP's post-LN + visual
  projection; no decoupling) to the question's CLIP text tokens;
- ``llm.last.l{j}``: head-mean attention of the last prompt token to the image tokens in LLM layer ``j`` (the full,
  unpruned model): FastV at ``layer=K`` scores with layer ``K - 1`` (ASAP scores that layer by SG-BiMask over all
  queries, which is not one of these rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["KS", "compute_signals", "patch_auc", "signal_report", "topk_recall", "USED_BY"]

KS = (16, 32, 48)

# which method reads which signal (the testbed's LLaVA reads CLIP layer -2, i.e. the output of block L-2)
USED_BY = {
    "clip.cls.feature": "VisionZip, VisPruner (important), DeSAP salient_layer=feature",
    "clip.cls.last": "DeSAP A_s (default)",
    "desap.qq.fcma": "DeSAP A_t (default)",
}


def patch_auc(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row AUC (B,) of ``scores`` (B, N) as a detector of ``target`` (B, N, bool): the probability that a
    target patch outscores a non-target one, ties counting one half (Mann-Whitney U / (n_pos n_neg), average
    ranks). Rows with no positive or no negative patch give NaN."""
    scores = scores.double()
    target = target.bool()
    n = scores.shape[1]
    order = scores.argsort(dim=1)
    sorted_scores = scores.gather(1, order)
    ranks = torch.empty_like(scores)
    for b in range(scores.shape[0]):  # average ranks over ties (1-based)
        values, inverse, counts = torch.unique_consecutive(sorted_scores[b], return_inverse=True,
                                                           return_counts=True)
        ends = counts.cumsum(0).double()
        avg = ends - (counts.double() - 1) / 2
        ranks[b, order[b]] = avg[inverse]
    pos = target.sum(1).double()
    neg = n - pos
    u = (ranks * target).sum(1) - pos * (pos + 1) / 2
    auc = u / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), auc, torch.full_like(auc, float("nan")))


def topk_recall(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row share (B,) of the target patches among the ``k`` highest scores (NaN for rows without a target).
    Ties at the cut are broken by ``torch.topk``, as the methods' own selection does."""
    k = min(k, scores.shape[1])
    top = torch.zeros_like(target, dtype=torch.bool)
    top.scatter_(1, torch.topk(scores.float(), k, dim=1).indices, True)
    pos = target.sum(1).double()
    hit = (top & target.bool()).sum(1).double()
    return torch.where(pos > 0, hit / pos.clamp(min=1), torch.full_like(pos, float("nan")))


@torch.no_grad()
def _batch_signals(loaded: Any, chunk: Sequence[Any], clip_text: Any) -> dict[str, torch.Tensor]:
    from ..methods.desap import plain_alignment, select_from_signals
    from ..models.clip_signals import ClipVisionSignals, cls_attention_row
    from ..text import questions_from_ids

    model, proc = loaded.model, loaded.processor
    proc.tokenizer.padding_side = "left"
    enc = proc(images=[s.image for s in chunk], text=[s.prompt for s in chunk], return_tensors="pt", padding=True)
    tower = model.model.vision_tower
    pix = enc["pixel_values"].to(model.device, model.dtype)
    out: dict[str, torch.Tensor] = {}
    hidden = tower(pixel_values=pix, output_hidden_states=True).hidden_states
    blocks = tower.encoder.layers
    for i, block in enumerate(blocks):  # block i reads hidden_states[i]
        out[f"clip.cls.b{i}"] = cls_attention_row(hidden[i], block=block)
    last = tower.post_layernorm(hidden[-1][:, 1:])
    questions = questions_from_ids(enc["input_ids"], enc["attention_mask"], model.config.image_token_id,
                                   proc.tokenizer)
    text, mask, eos = clip_text.encode(questions)
    src = ClipVisionSignals(tower, pix, model.config.vision_feature_layer, clip_text=clip_text)
    feats = src.features()
    salient = src.last_cls_attention()
    n = feats.shape[1]
    for mode in ("qq", "qk", "kk", "vv"):
        joint = src.decoupled(mode)
        for fcma in (True, False):
            task = select_from_signals(feats, salient, joint, text, mask, eos, k1=n, k2=0, fcma=fcma,
                                       merge=False)[2]
            out[f"desap.{mode}.{'fcma' if fcma else 'cosine'}"] = task
    out["clip.patch_cosine"] = plain_alignment(clip_text.visual_projection(last), text, mask)
    llm = model(**{k: v.to(model.device) for k, v in enc.items()}, output_attentions=True)
    image = enc["input_ids"] == model.config.image_token_id  # (B, L); every row has the same number
    for j, att in enumerate(llm.attentions):
        row = att.mean(1)[:, -1]  # (B, L): the last prompt token, head mean
        out[f"llm.last.l{j}"] = row[image.to(row.device)].view(len(chunk), -1)
    return {k: v.float().cpu() for k, v in out.items()}


def compute_signals(loaded: Any, samples: Sequence[Any], batch_size: int = 25) -> tuple[dict[str, torch.Tensor],
                                                                                        torch.Tensor]:
    """Every signal for every sample that has an asked-about object: ``({name: (S, N) scores}, (S, N) target)``.
    The LLM runs with eager attention (to return its weights), restored afterwards."""
    from ..evaluation import method_kwargs
    from .answer import boxes_to_patch_mask

    model = loaded.model
    vc = model.config.vision_config
    grid = vc.image_size // vc.patch_size
    samples = [s for s in samples if s.boxes]
    clip_text = method_kwargs("desap", loaded)["clip"]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        parts = [_batch_signals(loaded, samples[i:i + batch_size], clip_text)
                 for i in range(0, len(samples), batch_size)]
    finally:
        model.set_attn_implementation(before)
    target = torch.stack([boxes_to_patch_mask(s.boxes, vc.image_size, grid) for s in samples])
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, target


def _nanmean(x: torch.Tensor) -> float:
    return float(x[~x.isnan()].mean()) if (~x.isnan()).any() else float("nan")


def signal_report(signals: dict[str, torch.Tensor], target: torch.Tensor, ks: Sequence[int] = KS,
                  feature_block: int | None = None, fastv_layers: Sequence[int] = ()) -> dict:
    """AUC and top-K recall of every signal (means over samples), a chance row, and which method reads it."""
    n_blocks = sum(1 for k in signals if k.startswith("clip.cls.b"))
    users = {f"clip.cls.b{n_blocks - 1}": [USED_BY["clip.cls.last"]], "desap.qq.fcma": [USED_BY["desap.qq.fcma"]]}
    if feature_block is not None:
        users.setdefault(f"clip.cls.b{feature_block}", []).insert(0, USED_BY["clip.cls.feature"])
    for layer in fastv_layers:  # (ASAP and FastV+BiMask score the same layer differently: SG-BiMask, all queries)
        users.setdefault(f"llm.last.l{layer - 1}", []).append(f"FastV layer={layer}")
    rows = []
    for name, scores in signals.items():
        row = {"signal": name, "auc": _nanmean(patch_auc(scores, target))}
        for k in ks:
            row[f"recall@{k}"] = _nanmean(topk_recall(scores, target, k))
        row["used_by"] = "; ".join(users.get(name, []))
        rows.append(row)
    n = target.shape[1]
    chance = {"signal": "chance (random scores)", "auc": 0.5, **{f"recall@{k}": min(1.0, k / n) for k in ks},
              "used_by": "Random"}
    return {"n": int(target.shape[0]), "patches": int(n), "object_patches_mean": float(target.sum(1).float().mean()),
            "rows": rows, "chance": chance}
