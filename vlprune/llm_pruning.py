"""Dropping visual tokens between decoder layers (FastV, VisionDrop, ASAP).

Forward pre-hooks on the decoder layers gather hidden states, rotary tables, position ids and the 4-D mask
down to the kept positions, so later layers run (and cache) fewer tokens while SDPA stays in use. Scores
are recomputed from a layer's own q/k projections. During cached decoding each layer's mask columns are
gathered to the prompt positions that layer kept; a DynamicCache holds one length per layer, so this is
exact. StaticCache (one length for all layers) cannot hold this and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import compat
from .attention import decoder_attention_logits, decoder_attention_probs, mask_logits
from .ops import descending_order


@dataclass
class StageInputs:
    """What a stage's callbacks see, at the input of a decoder layer (current, already pruned, sequence).

    ``score`` sees the input of its score layer; ``select`` and ``merge`` the input of the drop layer (when the
    two differ, no other stage drops in between, so slot indices agree). ``keep`` is the number of visual
    tokens the stage keeps for each sample (stage.keep x n_images, at most the current count); ``scores`` and
    ``aux`` carry what ``score`` (then ``select``) returned to the later callbacks of the same stage.
    """

    layer: nn.Module
    hidden: torch.Tensor  # (B, L_cur, D)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    image_pos: torch.Tensor  # (B, n_img) positions of the surviving visual tokens in the current sequence
    rope: Callable
    n_images: int = 1
    keep: int = 0
    scores: torch.Tensor | None = None
    aux: Any = None

    def attention(self, query_pos: torch.Tensor) -> torch.Tensor:
        """Recomputed attention probabilities (B, H, q, L_cur) of this layer for the given queries."""
        return decoder_attention_probs(self.layer, self.hidden, self.cos, self.sin, self.mask, query_pos, self.rope)

    def logits(self, query_pos: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """Recomputed pre-softmax logits (B, H, q, L_cur), float32; ``masked``: the layer's mask applied (-inf)."""
        out = decoder_attention_logits(self.layer, self.hidden, self.cos, self.sin, query_pos, self.rope)
        return mask_logits(out, self.mask, query_pos) if masked else out

    def rotary_rows(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables (cos, sin) at rows ``pos`` (B, n) of the current sequence (``compat.table_rows``)."""
        return compat.table_rows(self.cos, pos), compat.table_rows(self.sin, pos)

    @property
    def last_pos(self) -> torch.Tensor:
        return torch.full((self.hidden.shape[0], 1), self.hidden.shape[1] - 1, device=self.hidden.device)


@dataclass
class LLMStage:
    """One pruning step inside the LLM.

    layer: visual tokens are dropped right before this decoder layer (its input and cache are shorter).
    keep: visual tokens that survive per image (per sample: keep x number of images).
    score: StageInputs -> (B, n_img) importance of each surviving visual token (higher is kept), or a pair
        ``(scores, aux)``; ``aux`` (anything) reaches ``select``/``merge`` as ``inputs.aux``.
    score_layer: the layer whose input feeds ``score`` (FastV: layer - 1; default: ``layer``). It must not lie
        before the previous stage's layer.
    select: optional, called at the drop layer with ``inputs.scores``/``inputs.aux`` from ``score``: returns the
        final ranking (B, n_img), or ``(ranking, aux)`` (ASAP re-ranks after consolidating the top-k).
    merge: optional (StageInputs, kept_slots (B, k), dropped_slots (B, n-k)) -> new hidden states (B, k, D)
        of the kept visual tokens, for methods that fold dropped tokens into kept ones.
    The top ``keep`` slots of the ranking are kept (stable: ties go to the earlier token). A stage whose
    ``keep`` covers every surviving visual token does nothing (no scoring, no merging).
    Hidden states, positions, rotary tables and masks of the kept tokens are gathered, never renumbered.
    """

    layer: int
    keep: int
    score: Callable[[StageInputs], Any]
    score_layer: int | None = None
    merge: Callable[[StageInputs, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    select: Callable[[StageInputs], Any] | None = None

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
            if s.keep < 1:
                raise ValueError(f"a stage must keep at least one visual token per image, got keep={s.keep}")
        self.stages = sorted(stages, key=lambda s: s.layer)
        for prev, s in zip(self.stages, self.stages[1:]):
            if s.layer == prev.layer:
                raise ValueError(f"two stages drop before the same decoder layer {s.layer}")
        for i, s in enumerate(self.stages):
            low = self.stages[i - 1].layer if i else 0
            if not low <= s.scored_at <= s.layer:
                raise ValueError(
                    f"the stage at layer {s.layer} scores at layer {s.scored_at}: it must lie in [{low}, {s.layer}] "
                    "(no other stage may drop tokens between scoring and dropping)"
                )
        self.rope = rope
        self.current: _Pass | None = None
        self._layer_index = 0  # the decoder layer whose hook runs (named in contract errors)
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
            if compat.is_static_cache(compat.layer_cache(kwargs)):
                raise NotImplementedError(
                    "in-LLM pruning needs a DynamicCache (per-layer lengths); StaticCache is not supported: "
                    "generate without cache_implementation='static' or use an encoder-side method"
                )
            self._layer_index = index
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
        cos, sin = compat.rotary_tables(kwargs, self._layer_index)
        out["position_embeddings"] = (compat.table_rows(cos, cols), compat.table_rows(sin, cols))
        mask = compat.layer_mask(kwargs)
        if mask is not None:
            mask = _gather_seq(mask, cols, 2) if mask.shape[2] == full_len else mask
            out["attention_mask"] = _gather_seq(mask, cols, 3)
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == full_len:
            pos = pos.expand(*pos.shape[:-2], cols.shape[0], full_len)
            out["position_ids"] = torch.gather(pos, -1, cols.expand(*pos.shape[:-2], *cols.shape))
        return out

    def _stage_keep(self, stage: LLMStage) -> int:
        return min(stage.keep * self.current.n_images, self.current.image_pos.shape[1])

    def _prefill(self, index: int, layer: nn.Module, hidden: torch.Tensor, kwargs: dict):
        p = self.current
        full = p.prompt_len
        kw = self._gather_kwargs(kwargs, p.cols, full)
        for stage in self.stages:  # at most one stage drops here; it runs before later stages score
            if stage.layer != index:
                continue
            k = self._stage_keep(stage)
            if k >= p.image_pos.shape[1]:  # keeps every surviving visual token: nothing to do
                p.scores.pop(stage.layer, None)
                self.history.append(p.image_ids.clone())
                continue
            inputs = self._inputs(layer, hidden, kw, k)
            out = stage.score(inputs) if stage.scored_at == index else p.scores.pop(stage.layer)
            inputs.scores, inputs.aux = out if isinstance(out, tuple) else (out, None)
            if stage.select is not None:
                out = stage.select(inputs)
                inputs.scores, inputs.aux = out if isinstance(out, tuple) else (out, inputs.aux)
            order = descending_order(inputs.scores)
            kept_slots = torch.sort(order[:, :k], dim=-1).values
            dropped_slots = torch.sort(order[:, k:], dim=-1).values
            if stage.merge is not None:
                new_img = stage.merge(inputs, kept_slots, dropped_slots).to(hidden.dtype)
                where = torch.gather(p.image_pos, 1, kept_slots).unsqueeze(-1).expand_as(new_img)
                hidden = hidden.scatter(1, where, new_img)
            hidden, kw = self._drop(hidden, kwargs, dropped_slots)
            self.history.append(p.image_ids.clone())
        for stage in self.stages:  # scores taken before a later drop layer (FastV: the layer before)
            if stage.scored_at == index and stage.layer != index:
                k = self._stage_keep(stage)
                if k < p.image_pos.shape[1]:
                    p.scores[stage.layer] = stage.score(self._inputs(layer, hidden, kw, k))
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

    def _inputs(self, layer: nn.Module, hidden: torch.Tensor, kw: dict, keep: int) -> StageInputs:
        cos, sin = compat.rotary_tables(kw, self._layer_index)
        return StageInputs(
            layer=layer, hidden=hidden, cos=cos, sin=sin, mask=compat.layer_mask(kw),
            image_pos=self.current.image_pos, rope=self.rope, n_images=self.current.n_images, keep=keep,
        )

    def _decode_kwargs(self, index: int, kwargs: dict) -> dict:
        p = self.current
        cols = p.layer_cols.get(index)
        mask = compat.layer_mask(kwargs)
        if cols is None or cols.shape[1] == p.prompt_len or mask is None:
            return dict(kwargs)
        kv = mask.shape[-1]
        new = torch.arange(p.prompt_len, kv, device=cols.device).expand(cols.shape[0], -1)
        out = dict(kwargs)
        out["attention_mask"] = _gather_seq(mask, torch.cat([cols, new], 1), 3)
        return out
