"""DeSAP — Decoupled Similarity-Aware Pruning (Chen et al., 2026, arXiv:2604.11240).

Inside the vision encoder: a task cue A_t (decoupled q-q attention of the last CLIP block, aligned with the
question's CLIP text tokens by fine-grained cross-modal alignment, eqs. 2-3) and a visual cue A_s ([CLS]
attention, eq. 4) each pick half of the budget (eq. 5); the dropped tokens are average-merged into their
nearest kept token (§4.3). Without a question (empty prompt, captioning) the whole budget goes to A_s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..cuda_graph import GraphedCall
from ..ops import gather_rows, mask_from_indices, nearest_centre_merge, spatial_sort, topk_indices
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class DesapConfig:
    """Options of DeSAP; defaults are the paper's (salient_layer and merge_space: the readings chosen on the
    testbed's val split, docs/methods/desap.md).

    task_ratio: share of the budget chosen by the task cue, k1 = round(K * task_ratio) (paper: 0.5, Table 4a).
    lam: sharpness lambda of the fine-grained cross-modal alignment (eq. 3; paper: 0.1).
    attention: pair forming the decoupled attention map, "qq" | "qk" | "kk" | "vv" (paper: "qq", Table 4b).
    fcma: use fine-grained cross-modal alignment (eq. 3); False = plain mean cosine similarity (Table 5).
    merge: average-merge dropped tokens into their most similar kept token (§4.3).
    sign: +1 ranks patches by similarity to the question, -1 by dissimilarity (a polarity check; keep +1).
    salient_layer: where eq. 4's [CLS] attention A_s is read: "last" = the vision encoder's last block (the
        paper's words, "from the last layer of the visual encoder"), "feature" = the block that produced the
        features LLaVA reads (hidden_states[-2]; what VisionZip/VisPruner read). docs/methods/desap.md.
    merge_space: where §4.3's cluster average is taken: "vision" = of the vision features, before the projector;
        "projected" = of the projected (LLM-input) tokens. Clusters are formed in vision feature space either way.
    """

    task_ratio: float = 0.5
    lam: float = 0.1
    attention: Literal["qq", "qk", "kk", "vv"] = "qq"
    fcma: bool = True
    merge: bool = True
    sign: float = 1.0
    salient_layer: Literal["last", "feature"] = "last"
    merge_space: Literal["vision", "projected"] = "projected"

    def __post_init__(self) -> None:
        if not 0.0 <= self.task_ratio <= 1.0:
            raise ValueError(f"task_ratio must be in [0, 1], got {self.task_ratio}")
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if self.attention not in ("qq", "qk", "kk", "vv"):
            raise ValueError(f"attention must be one of qq/qk/kk/vv, got {self.attention!r}")
        if self.sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {self.sign}")
        if self.salient_layer not in ("last", "feature"):
            raise ValueError(f"salient_layer must be 'last' or 'feature', got {self.salient_layer!r}")
        if self.merge_space not in ("vision", "projected"):
            raise ValueError(f"merge_space must be 'vision' or 'projected', got {self.merge_space!r}")


def fine_grained_alignment(
    patches: torch.Tensor,
    v_s: torch.Tensor,
    text: torch.Tensor,
    q_t: torch.Tensor,
    text_mask: torch.Tensor,
    lam: float = 0.1,
) -> torch.Tensor:
    """Task-relevant attention map A_t (B, N) by fine-grained cross-modal alignment, eq. 3.

    patches (B, N, e): decoupled attention rows A_d of the patch tokens; v_s (B, e): its [CLS] row;
    text (B, T, e): per-token CLIP text embeddings S_q; q_t (B, e): the [EOS] embedding; text_mask (B, T).
    All rows are L2-normalised. With m = A_d S_q^T, alpha = A_d q_t, beta = S_q v_s:
    MV_ij = alpha_i softmax_j(lam beta_j m_ij) / d1,  MT_ij = beta_j softmax_i(lam alpha_i m_ij) / d2,
    A_t = mean_j ((MV + MT) * m) over the d2 non-padded text tokens.
    """
    a = F.normalize(patches.float(), dim=-1)
    s = F.normalize(text.float(), dim=-1)
    vs = F.normalize(v_s.float(), dim=-1)
    qt = F.normalize(q_t.float(), dim=-1)
    valid = text_mask.bool().unsqueeze(1)  # (B, 1, T)
    m = a @ s.transpose(1, 2)  # (B, N, T)
    alpha = (a @ qt.unsqueeze(-1)).squeeze(-1)  # (B, N)
    beta = (s @ vs.unsqueeze(-1)).squeeze(-1)  # (B, T)
    d1 = a.shape[1]
    d2 = valid.sum(-1).clamp(min=1).float()  # (B, 1)
    logits_v = (lam * beta.unsqueeze(1) * m).masked_fill(~valid, float("-inf"))
    mv = alpha.unsqueeze(-1) * torch.softmax(logits_v, dim=-1) / d1
    mt = beta.unsqueeze(1) * torch.softmax(lam * alpha.unsqueeze(-1) * m, dim=1) / d2.unsqueeze(-1)
    weighted = ((mv + mt) * m).masked_fill(~valid, 0.0)
    return weighted.sum(-1) / d2


def plain_alignment(patches: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Without FCMA (Table 5 "De-Simi"): mean cosine similarity of each patch to the question tokens."""
    m = F.normalize(patches.float(), dim=-1) @ F.normalize(text.float(), dim=-1).transpose(1, 2)
    valid = text_mask.bool().unsqueeze(1)
    return m.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1).clamp(min=1)


def rank_and_prune(task: torch.Tensor, salient: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Eq. 5: top-k1 patches by A_t, then top-k2 by A_s among the rest; returned in spatial order (B, k1+k2)."""
    first = topk_indices(task, k1)
    taken = mask_from_indices(first, task.shape[1])
    second = topk_indices(salient, k2, exclude=taken)
    return spatial_sort(torch.cat([first, second], dim=1))


def select_from_signals(
    feats: torch.Tensor,
    salient: torch.Tensor,
    *cue: torch.Tensor,
    k1: int,
    k2: int,
    lam: float = 0.1,
    fcma: bool = True,
    merge: bool = True,
    sign: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """DeSAP from its signals, pure tensors (eqs. 3-5 and §4.3): ``(features (B, k1+k2, D), kept, task[, assign])``.

    feats (B, N, D) and salient (B, N) = A_s; ``cue`` is empty (k1 = 0: the visual cue alone) or
    ``(joint (B, 1+N, e), text (B, T, e), text_mask (B, T), eos (B, e))``. No host synchronisation and fixed
    output shapes, so on a GPU it is replayed from one CUDA graph per shape (``_select_graphed``).
    """
    if k1 > 0:
        joint, text, text_mask, eos = cue
        if fcma:
            task = fine_grained_alignment(joint[:, 1:], joint[:, 0], text, eos, text_mask, lam)
        else:
            task = plain_alignment(joint[:, 1:], text, text_mask)
        # images without a question fall back to the visual cue alone
        has_text = text_mask.any(dim=-1, keepdim=True)
        task = torch.where(has_text, sign * task, salient.float())
    else:
        task = salient.float()
    kept = rank_and_prune(task, salient, k1, k2)
    if merge:
        merged, assign = nearest_centre_merge(feats, kept)
        return merged, kept, task, assign
    return gather_rows(feats, kept), kept, task


# on a GPU: ~50 small kernels (alignment, ranking, merge) launched once, from a CUDA graph per input shape
_select_graphed = GraphedCall(select_from_signals)


def select(source: SignalSource, keep: int, cfg: DesapConfig) -> Selection:
    """DeSAP on one batch of images: decoupled similarity + [CLS] saliency, rank & prune, merge."""
    feats = source.features()
    salient = source.last_cls_attention() if cfg.salient_layer == "last" else source.cls_attention()
    k1 = int(round(keep * cfg.task_ratio)) if source.has_question() else 0
    cue: tuple[torch.Tensor, ...] = ()
    if k1 > 0:
        joint = source.decoupled(cfg.attention)  # (B, 1+N, e); queued before the text side, which may overlap it
        cue = (joint, *source.question())
    in_vision = cfg.merge and cfg.merge_space == "vision"
    out = _select_graphed(feats, salient, *cue, k1=k1, k2=keep - k1, lam=cfg.lam, fcma=cfg.fcma, merge=in_vision,
                          sign=cfg.sign)
    features, kept, task = out[:3]
    if cfg.merge and not in_vision:  # same clusters (vision-feature cosine), averaged after the projector
        features, assign = nearest_centre_merge(source.projected_features(), kept, metric=feats)
        return Selection(features=features, indices=kept, assign=assign, extras={"task": task}, projected=True)
    return Selection(features=features, indices=kept, assign=out[3] if cfg.merge else None, extras={"task": task})


register_method("desap", config=DesapConfig, paper="DeSAP (arXiv:2604.11240, 2026)", encoder=select)
