"""Dropping visual tokens between decoder layers (FastV, VisionDrop, ASAP).

Forward pre-hooks on the decoder layers gather hidden states, rotary tables, position ids and the 4-D mask
down to the kept positions, so later layers run (and cache) fewer tokens while SDPA stays in use. Scores
are recomputed from a layer's own q/k projections. During cached decoding each layer's mask columns are
gathered to the prompt positions that layer kept; a DynamicCache holds one length per layer, so this is
exact. StaticCache (one length for all layers) cannot hold this and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .attention import decoder_attention_probs


@dataclass
class StageInputs:
    """What a stage's scorer sees, at the input of its score layer (current, already pruned, sequence)."""

    layer: nn.Module
    hidden: torch.Tensor  # (B, L_cur, D)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    image_pos: torch.Tensor  # (B, n_img) positions of the surviving visual tokens in the current sequence
    rope: Callable

    def attention(self, query_pos: torch.Tensor) -> torch.Tensor:
        """Recomputed attention probabilities (B, H, q, L_cur) of the score layer for the given queries."""
        return decoder_attention_probs(self.layer, self.hidden, self.cos, self.sin, self.mask, query_pos, self.rope)

    @property
    def last_pos(self) -> torch.Tensor:
        return torch.full((self.hidden.shape[0], 1), self.hidden.shape[1] - 1, device=self.hidden.device)


@dataclass
class LLMStage:
    """One pruning step inside the LLM.

    layer: visual tokens are dropped right before this decoder layer (its input and cache are shorter).
    keep: visual tokens that survive per image (per sample: keep x number of images).
    score: StageInputs -> (B, n_img) importance of each surviving visual token (higher is kept).
    score_layer: the layer whose attention feeds ``score`` (FastV: layer - 1; default: ``layer``).
    merge: optional (StageInputs, kept_slots (B, k), dropped_slots (B, n-k)) -> new hidden states (B, k, D)
        of the kept visual tokens, for methods that fold dropped tokens into kept ones.
    """

    layer: int
    keep: int
    score: Callable[[StageInputs], torch.Tensor]
    score_layer: int | None = None
    merge: Callable[[StageInputs, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def scored_at(self) -> int:
        return self.layer if self.score_layer is None else self.score_layer


@dataclass
class _Pass:
    """Book-keeping of one prompt (prefill) and the decode steps that follow it."""

    prompt_len: int
    n_images: int
    cols: torch.Tensor  # (B, L_cur) prompt positions alive at the current layer
    image_pos: torch.Tensor  # (B, n_img) current positions of surviving visual tokens
    image_ids: torch.Tensor  # (B, n_img) original prompt positions of the surviving visual tokens
    orig_image_pos: torch.Tensor  # (B, n_img_total) prompt positions of all visual tokens
    layer_cols: dict[int, torch.Tensor] = field(default_factory=dict)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)


def _gather_seq(x: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[0], shape[dim] = cols.shape[0], cols.shape[1]
    idx = cols.view(shape)
    expand = list(x.shape)
    expand[0], expand[dim] = cols.shape[0], cols.shape[1]
    if x.shape[0] == 1 and cols.shape[0] > 1:
        x = x.expand(cols.shape[0], *x.shape[1:])
    return torch.gather(x, dim, idx.expand(expand))


class LLMPruner:
    """Installs the stages on a decoder stack of one model instance; ``remove()`` takes them off."""

    def __init__(self, layers: nn.ModuleList, stages: list[LLMStage], rope: Callable) -> None:
        for s in stages:
            if not 0 < s.layer < len(layers):
                raise ValueError(
                    f"cannot prune before decoder layer {s.layer}: the LLM has {len(layers)} layers "
                    f"(choose 1 <= layer <= {len(layers) - 1})"
                )
        self.stages = sorted(stages, key=lambda s: s.layer)
        self.rope = rope
        self.current: _Pass | None = None
        self.decoding = False
        self.last_kept: torch.Tensor | None = None  # (B, keep*n_images) prompt positions kept at the end
        self.history: list[torch.Tensor] = []  # per stage, (B, k) prompt positions kept
        self._handles = [
            layer.register_forward_pre_hook(self._make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]
        self.layers = layers

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- called by the model wrapper ---------------------------------------------------------------------
    def begin_prefill(self, image_mask: torch.Tensor, n_images: list[int]) -> None:
        """Start a new prompt; ``image_mask`` (B, L) marks the visual tokens of every sample."""
        counts = image_mask.sum(-1)
        if len(set(n_images)) > 1 or len(set(counts.tolist())) > 1:
            raise NotImplementedError(
                "in-LLM pruning needs the same number of images (and visual tokens) in every sample of a batch; "
                "split the batch by image count or use an encoder-side method"
            )
        b, n = image_mask.shape
        image_pos = torch.nonzero(image_mask)[:, 1].view(b, -1)
        self.current = _Pass(
            prompt_len=n,
            n_images=n_images[0] if n_images else 0,
            cols=torch.arange(n, device=image_mask.device).expand(b, n),
            image_pos=image_pos,
            image_ids=image_pos.clone(),
            orig_image_pos=image_pos.clone(),
        )
        self.decoding = False
        self.history = []

    def begin_decode(self) -> None:
        self.decoding = True

    # -- hooks ------------------------------------------------------------------------------------------
    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self.current is None or self.current.n_images == 0:
                return None
            if "past_key_values" in kwargs and type(kwargs["past_key_values"]).__name__ == "StaticCache":
                raise NotImplementedError("in-LLM pruning needs a DynamicCache (per-layer lengths); StaticCache is not supported")
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if self.decoding:
                new_kwargs = self._decode_kwargs(index, kwargs)
            else:
                hidden, new_kwargs = self._prefill(index, module, hidden, kwargs)
            if args:
                return (hidden, *args[1:]), new_kwargs
            return args, {**new_kwargs, "hidden_states": hidden}

        return hook

    def _gather_kwargs(self, kwargs: dict, cols: torch.Tensor, full_len: int) -> dict:
        out = dict(kwargs)
        if cols.shape[1] == full_len:
            return out
        cos, sin = kwargs["position_embeddings"]
        out["position_embeddings"] = (_gather_seq(cos, cols, -2), _gather_seq(sin, cols, -2))
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            mask = _gather_seq(mask, cols, 2) if mask.shape[2] == full_len else mask
            out["attention_mask"] = _gather_seq(mask, cols, 3)
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == full_len:
            pos = pos.expand(*pos.shape[:-2], cols.shape[0], full_len)
            out["position_ids"] = torch.gather(pos, -1, cols.expand(*pos.shape[:-2], *cols.shape))
        return out

    def _prefill(self, index: int, layer: nn.Module, hidden: torch.Tensor, kwargs: dict):
        p = self.current
        full = p.prompt_len
        kw = self._gather_kwargs(kwargs, p.cols, full)
        for stage in self.stages:
            if stage.scored_at == index:
                p.scores[stage.layer] = stage.score(self._inputs(layer, hidden, kw))
        for stage in self.stages:
            if stage.layer != index:
                continue
            scores = p.scores.pop(stage.layer)
            k = min(stage.keep * p.n_images, p.image_pos.shape[1])
            order = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices
            kept_slots = torch.sort(order[:, :k], dim=-1).values
            dropped_slots = torch.sort(order[:, k:], dim=-1).values
            if stage.merge is not None and dropped_slots.shape[1] > 0:
                new_img = stage.merge(self._inputs(layer, hidden, kw), kept_slots, dropped_slots)
                hidden = hidden.scatter(1, torch.gather(p.image_pos, 1, kept_slots).unsqueeze(-1).expand_as(new_img), new_img)
            hidden, kw = self._drop(hidden, kwargs, dropped_slots)
            self.history.append(p.image_ids.clone())
        p.layer_cols[index] = p.cols
        if index == len(self.layers) - 1:
            self.last_kept = p.image_ids
        return hidden, kw

    def _drop(self, hidden: torch.Tensor, kwargs: dict, dropped_slots: torch.Tensor):
        p = self.current
        b, cur = p.cols.shape
        alive = torch.ones(b, cur, dtype=torch.bool, device=hidden.device)
        alive.scatter_(1, torch.gather(p.image_pos, 1, dropped_slots), False)
        rel = torch.nonzero(alive)[:, 1].view(b, -1)
        is_img = torch.zeros(b, cur, dtype=torch.bool, device=hidden.device)
        is_img.scatter_(1, p.image_pos, True)
        kept_img = torch.gather(is_img, 1, rel)
        img_keep = torch.ones_like(p.image_pos, dtype=torch.bool).scatter_(1, dropped_slots, False)
        p.image_ids = p.image_ids[img_keep].view(b, -1)
        p.cols = torch.gather(p.cols, 1, rel)
        p.image_pos = torch.nonzero(kept_img)[:, 1].view(b, -1)
        return _gather_seq(hidden, rel, 1), self._gather_kwargs(kwargs, p.cols, p.prompt_len)

    def _inputs(self, layer: nn.Module, hidden: torch.Tensor, kw: dict) -> StageInputs:
        cos, sin = kw["position_embeddings"]
        mask = kw.get("attention_mask")
        return StageInputs(
            layer=layer, hidden=hidden, cos=cos, sin=sin,
            mask=mask if isinstance(mask, torch.Tensor) else None,
            image_pos=self.current.image_pos, rope=self.rope,
        )

    def _decode_kwargs(self, index: int, kwargs: dict) -> dict:
        p = self.current
        cols = p.layer_cols.get(index)
        mask = kwargs.get("attention_mask")
        if cols is None or cols.shape[1] == p.prompt_len or not (isinstance(mask, torch.Tensor) and mask.dim() == 4):
            return dict(kwargs)
        kv = mask.shape[-1]
        new = torch.arange(p.prompt_len, kv, device=cols.device).expand(cols.shape[0], -1)
        out = dict(kwargs)
        out["attention_mask"] = _gather_seq(mask, torch.cat([cols, new], 1), 3)
        return out
