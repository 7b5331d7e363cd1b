"""Dropping visual tokens between decoder layers (FastV, VisionDrop, ASAP, ...): the machinery that runs the
:class:`~vlprune.llm_stage.LLMStage` steps a method describes (vlprune/llm_stage.py).

Forward pre-hooks on the decoder layers gather hidden states, rotary tables, position ids and the 4-D mask
down to the kept positions, so later layers run (and cache) fewer tokens while SDPA stays in use. Scores
are recomputed from a layer's own q/k projections. During cached decoding each layer's mask columns are
gathered to the prompt positions that layer kept; a DynamicCache holds one length per layer, so this is
exact. StaticCache (one length for all layers) cannot hold this and is refused.

Samples of a batch may hold different numbers of visual tokens (LLaVA-NeXT / Qwen2.5-VL images of different sizes,
different image counts). Each stage keeps ``keep x images`` per sample; its callbacks run once per group of rows
that share (visual tokens, images), on those rows only, so every sample is scored as it would be alone. The
sequence stays rectangular: every row loses the same number of columns, taken from its dropped visual tokens first,
then from its padding (both invisible to the other tokens); a row with more dropped tokens than that keeps the rest
as *dead* columns, masked out of every later layer's attention (prefill and cached decoding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import compat
from .llm_stage import LLMStage, PromptView, StageInputs  # noqa: F401  (re-exported)
from .ops import descending_order, true_first
from .positions import position_causal_mask, renumbered, shift_rope


@dataclass
class _Group:
    """Rows of the batch that a stage scores together: same number of surviving visual tokens and of images."""

    rows: torch.Tensor | None  # (G,) row indices; None: every row of the batch
    count: int  # surviving visual tokens of each row
    n_images: int
    keep: int  # visual tokens each row keeps (< count), the stage's extra tokens included
    budget: int = 0  # the stage's budget for these rows (keep x images, < count)


@dataclass
class _Pass:
    """Book-keeping of one prompt (prefill) and the decode steps that follow it. Per-row visual slots are padded to
    the largest count: slot ``j`` of row ``b`` is valid for ``j < counts[b]`` (a padded slot holds no visual token)."""

    prompt_len: int
    n_images: list[int]  # per row
    cols: torch.Tensor  # (B, L_cur) prompt positions alive at the current layer
    is_img: torch.Tensor  # (B, L_cur) bool: surviving visual tokens
    pad: torch.Tensor  # (B, L_cur) bool: padding columns (attention mask 0), hidden from every token by the model
    dead: torch.Tensor | None = None  # (B, L_cur) bool: dropped tokens kept as masked columns (rows equalised)
    counts: list[int] = field(default_factory=list)  # surviving visual tokens per row
    image_pos: torch.Tensor | None = None  # (B, max count) current positions of the surviving visual tokens
    orig_counts: list[int] = field(default_factory=list)  # visual tokens per row in the prompt
    orig_image_pos: torch.Tensor | None = None  # (B, max orig count) prompt positions of all visual tokens
    layer_cols: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_dead: dict[int, torch.Tensor | None] = field(default_factory=dict)
    scores: dict[int, list] = field(default_factory=dict)
    pos: torch.Tensor | None = None  # (B, L_cur) renumbered positions (None: the original ones, ``cols``)
    rope_full: tuple[torch.Tensor, torch.Tensor] | None = None  # the prompt's rotary tables (renumbering only)
    layer_shift: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer and row, prompt tokens dropped
    prompt: PromptView | None = None  # the input of decoder layer 0 (kept during the prefill only)

    def refresh(self) -> None:
        """Recompute ``counts`` and ``image_pos`` from ``is_img`` (one host read)."""
        self.counts = self.is_img.sum(-1).tolist()
        self.image_pos = true_first(self.is_img)[:, : max(self.counts, default=0)]

    @property
    def image_ids(self) -> torch.Tensor:
        """(B, max count) original prompt positions of the surviving visual tokens; -1 in padded slots."""
        ids = torch.gather(self.cols, 1, self.image_pos)
        if len(set(self.counts)) > 1:
            slot = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(slot >= torch.tensor(self.counts, device=ids.device).unsqueeze(1), -1)
        return ids


def _gather_seq(x: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[0], shape[dim] = cols.shape[0], cols.shape[1]
    idx = cols.view(shape)
    expand = list(x.shape)
    expand[0], expand[dim] = cols.shape[0], cols.shape[1]
    if x.shape[0] == 1 and cols.shape[0] > 1:
        x = x.expand(cols.shape[0], *x.shape[1:])
    return torch.gather(x, dim, idx.expand(expand))


def _take_rows(x: torch.Tensor | None, rows: torch.Tensor | None, dim: int = 0) -> torch.Tensor | None:
    """Rows ``rows`` of the batch dimension ``dim`` of ``x`` (a broadcast batch of 1, or rows=None: ``x`` itself)."""
    if x is None or rows is None or x.shape[dim] == 1:
        return x
    return x.index_select(dim, rows)


def _put_rows(x: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``x`` with its batch rows ``rows`` replaced by ``value`` (out of place; rows=None: ``value``)."""
    return value if rows is None else x.index_copy(0, rows, value)


def _causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """The boolean causal mask (1, 1, q, kv) of ``queries`` tokens that end a sequence of ``keys``."""
    i = torch.arange(queries, device=device).view(-1, 1)
    return (torch.arange(keys, device=device).view(1, -1) <= i + keys - queries).view(1, 1, queries, keys)


def _hide_columns(mask: torch.Tensor, dead: torch.Tensor, own_rows: bool) -> torch.Tensor:
    """The 4-D mask (B or 1, H, q, kv) with the key columns ``dead`` (B, n <= kv: the first n keys) hidden, for
    bool (True: attend) and additive masks. ``own_rows`` (prefill, q = kv = n): a dead row still sees itself, so
    that no query row is fully masked (its output is never read)."""
    b, n = dead.shape
    q, kv = mask.shape[-2:]
    block = dead if n == kv else torch.cat([dead, dead.new_zeros(b, kv - n)], 1)
    block = block.view(b, 1, 1, kv)
    if own_rows:
        block = block & ~torch.eye(q, kv, dtype=torch.bool, device=dead.device).view(1, 1, q, kv)
    mask = mask.expand(b, *mask.shape[1:])
    if mask.dtype == torch.bool:
        return mask & ~block
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


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
        self.last_kept: torch.Tensor | None = None  # (B, max kept) prompt positions kept at the end (-1: none)
        self.history: list[torch.Tensor] = []  # per stage, (B, max kept) prompt positions kept (-1: none)
        self._handles = [
            layer.register_forward_pre_hook(self._make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]
        self.layers = layers

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- called by the model wrapper ---------------------------------------------------------------------
    def begin_prefill(
        self, image_mask: torch.Tensor, n_images: list[int], attention_mask: torch.Tensor | None = None
    ) -> None:
        """Start a new prompt; ``image_mask`` (B, L) marks the visual tokens of every sample, ``n_images`` counts
        each sample's images, ``attention_mask`` (B, L, optional) its padding. Samples may differ in both."""
        b, n = image_mask.shape
        pad = torch.zeros_like(image_mask, dtype=torch.bool)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == image_mask.shape:
            pad = attention_mask == 0
        p = _Pass(
            prompt_len=n,
            n_images=list(n_images) if n_images else [0] * b,
            cols=torch.arange(n, device=image_mask.device).expand(b, n),
            is_img=image_mask.bool(),
            pad=pad,
        )
        p.refresh()
        p.orig_counts, p.orig_image_pos = list(p.counts), p.image_pos
        self.current = p
        self.decoding = False
        self.history = []

    def begin_decode(self) -> None:
        self.decoding = True

    # -- hooks ------------------------------------------------------------------------------------------
    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self.current is None or not any(self.current.n_images):
                return None
            if compat.is_static_cache(compat.layer_cache(kwargs)):
                raise NotImplementedError(
                    "in-LLM pruning needs a DynamicCache (per-layer lengths); StaticCache is not supported: "
                    "generate without cache_implementation='static' or use an encoder-side method"
                )
            self._layer_index = index
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if self.decoding:
                new_kwargs = self._decode_kwargs(index, kwargs, hidden.shape[1])
            else:
                hidden, new_kwargs = self._prefill(index, module, hidden, kwargs)
            if args:
                return (hidden, *args[1:]), new_kwargs
            return args, {**new_kwargs, "hidden_states": hidden}

        return hook

    def _gather_kwargs(self, kwargs: dict) -> dict:
        """The layer's keyword arguments restricted to the current columns, dead columns hidden."""
        p = self.current
        cols, full_len = p.cols, p.prompt_len
        out = dict(kwargs)
        at = cols if p.pos is None else p.pos  # renumbered positions, or the original ones
        if cols.shape[1] != full_len:
            cos, sin = compat.rotary_tables(kwargs, self._layer_index)
            out["position_embeddings"] = (compat.table_rows(cos, at), compat.table_rows(sin, at))
            mask = compat.layer_mask(kwargs)
            if mask is not None:
                mask = _gather_seq(mask, cols, 2) if mask.shape[2] == full_len else mask
                out["attention_mask"] = _gather_seq(mask, cols, 3)
            pos = kwargs.get("position_ids")
            if isinstance(pos, torch.Tensor) and pos.shape[-1] == full_len:
                pos = pos.expand(*pos.shape[:-2], cols.shape[0], full_len)
                out["position_ids"] = torch.gather(pos, -1, at.expand(*pos.shape[:-2], *at.shape))
        if p.dead is not None:
            n = cols.shape[1]
            mask = compat.layer_mask(out)
            out["attention_mask"] = _hide_columns(
                mask if mask is not None else self._built_mask(n, n, cols.device), p.dead, own_rows=True
            )
        if p.pos is not None:
            cos = compat.rotary_tables(kwargs, self._layer_index)[0]
            out["attention_mask"] = position_causal_mask(compat.layer_mask(out), p.pos, cos.dtype)
        return out

    def _built_mask(self, queries: int, keys: int, device: torch.device) -> torch.Tensor:
        """A causal mask where the model passes none (SDPA without padding), to hide dead columns with."""
        impl = compat.attention_implementation(self.layers[self._layer_index])
        if impl != "sdpa":
            raise NotImplementedError(
                f"in-LLM pruning of a batch whose samples keep different numbers of visual tokens needs a 4-D "
                f"attention mask; the {impl!r} attention passes none: load the model with attn_implementation="
                "'sdpa' or 'eager', or run samples with different image sizes in separate batches"
            )
        return _causal_mask(queries, keys, device)

    def _groups(self, stage: LLMStage) -> list[_Group]:
        """The rows a stage prunes, grouped by (surviving visual tokens, images); rows it keeps whole are left out."""
        p = self.current
        by: dict[tuple[int, int, int], list[int]] = {}
        for row, (count, n_img) in enumerate(zip(p.counts, p.n_images)):
            k = count if stage.adaptive else min(stage.keep * n_img, count)
            if k < count or (stage.adaptive and count > 0):
                by.setdefault((count, n_img, k), []).append(row)
        rows = len(p.counts)
        return [
            _Group(None if len(r) == rows else torch.tensor(r, device=p.cols.device), count, n_img,
                   k if stage.extra is None else min(count, k + stage.extra(count, k)), k)
            for (count, n_img, k), r in by.items()
        ]

    def _prefill(self, index: int, layer: nn.Module, hidden: torch.Tensor, kwargs: dict):
        p = self.current
        if index == 0:
            p.prompt = PromptView(hidden, p.is_img, p.pad)
        kw = self._gather_kwargs(kwargs)
        for stage in self.stages:  # at most one stage drops here; it runs before later stages score
            if stage.layer != index:
                continue
            groups = self._groups(stage)
            pending = p.scores.pop(stage.layer, None)
            if not groups:  # keeps every surviving visual token: nothing to do
                self.history.append(p.image_ids.clone())
                continue
            drop = torch.zeros_like(p.is_img)
            new_order = None  # renumbering stages: the new order of the kept visual tokens
            for g, group in enumerate(groups):
                inputs = self._inputs(layer, hidden, kw, group)
                out = stage.score(inputs) if stage.scored_at == index else pending[g]
                inputs.scores, inputs.aux = out if isinstance(out, tuple) else (out, None)
                if stage.select is not None:
                    out = stage.select(inputs)
                    inputs.scores, inputs.aux = out if isinstance(out, tuple) else (out, inputs.aux)
                order = descending_order(inputs.scores)
                alive = torch.isfinite(inputs.scores) if stage.adaptive else None  # adaptive: -inf = dropped
                k = int(alive.sum(-1).max()) if alive is not None else group.keep
                kept_slots = torch.sort(order[:, :k], dim=-1).values
                dropped_slots = torch.sort(order[:, k:], dim=-1).values
                if stage.merge is not None:
                    new_img = stage.merge(inputs, kept_slots, dropped_slots).to(hidden.dtype)
                    where = torch.gather(inputs.image_pos, 1, kept_slots).unsqueeze(-1).expand_as(new_img)
                    hidden = _put_rows(hidden, group.rows, inputs.hidden.scatter(1, where, new_img))
                gone = torch.gather(inputs.image_pos, 1, dropped_slots)
                drop = _put_rows(drop, group.rows, _take_rows(drop, group.rows).scatter(1, gone, True))
                if alive is not None:  # adaptive: the -inf slots among the top k (rows keeping fewer than k)
                    dead = ~torch.gather(alive, 1, kept_slots)
                    where = torch.gather(inputs.image_pos, 1, kept_slots)
                    drop = _put_rows(drop, group.rows, _take_rows(drop, group.rows).scatter(1, where, dead))
                if stage.renumber is not None:
                    self._check_renumber(kwargs, group, alive)
                    new_order = stage.renumber(inputs, kept_slots)
            hidden, kw = self._drop(hidden, kwargs, drop, new_order, stage.compact)
            self.history.append(p.image_ids.clone())
        for stage in self.stages:  # scores taken before a later drop layer (FastV: the layer before)
            if stage.scored_at == index and stage.layer != index:
                groups = self._groups(stage)
                if groups:
                    p.scores[stage.layer] = [stage.score(self._inputs(layer, hidden, kw, g)) for g in groups]
        p.layer_cols[index], p.layer_dead[index] = p.cols, p.dead
        if p.pos is not None:
            dead = 0 if p.dead is None else p.dead.sum(-1)  # a row's dead columns are dropped tokens too
            p.layer_shift[index] = p.prompt_len - p.cols.shape[1] + dead + torch.zeros_like(p.cols[:, 0])
        if index == len(self.layers) - 1:
            self.last_kept = p.image_ids
            p.prompt = None
        return hidden, kw

    def _drop(self, hidden: torch.Tensor, kwargs: dict, drop: torch.Tensor, new_order: torch.Tensor | None = None,
              compact: bool = False):
        """Remove the visual columns ``drop`` (B, L_cur). Every row loses the same number of columns: dropped and
        dead ones first, then padding; what a row cannot lose that way stays as a dead (masked) column. ``new_order``
        (B, k): a renumbering stage's order of the kept visual tokens (positions become 0..L'-1); ``compact``: positions
        0..L'-1 in sequence order, dead columns not counted."""
        p = self.current
        if (new_order is not None or compact) and p.rope_full is None:
            p.rope_full = compat.rotary_tables(kwargs, self._layer_index)
        gone = drop if p.dead is None else drop | p.dead
        removable = gone | p.pad
        width = int(torch.minimum(gone.sum(-1).max(), removable.sum(-1).min()))
        rank = torch.where(gone, 0, torch.where(p.pad, 1, 2)).to(torch.uint8)
        order = torch.sort(rank, dim=-1, stable=True).indices
        rel = torch.sort(order[:, width:], dim=-1).values
        dead = torch.gather(gone, 1, rel)
        p.dead = dead if bool(dead.any()) else None
        p.cols = torch.gather(p.cols, 1, rel)
        p.is_img = torch.gather(p.is_img & ~drop, 1, rel)
        p.pad = torch.gather(p.pad, 1, rel)
        p.refresh()
        if compact:  # a dead column takes the next live token's position (it is masked out)
            before = 0 if p.dead is None else p.dead.long().cumsum(-1) - p.dead.long()
            p.pos = torch.arange(rel.shape[1], device=rel.device) - before
            p.pos = p.pos.expand(rel.shape[0], -1)
        elif new_order is not None:
            p.pos = renumbered(p.image_pos, new_order, rel.shape[1])
        elif p.pos is not None:  # a later stage without renumbering: ranks of the positions so far
            p.pos = torch.argsort(torch.argsort(torch.gather(p.pos, 1, rel), dim=-1), dim=-1)
        return _gather_seq(hidden, rel, 1), self._gather_kwargs(kwargs)

    def _check_renumber(self, kwargs: dict, group: _Group, alive: torch.Tensor | None = None) -> None:
        pos = kwargs.get("position_ids")
        ragged = alive is not None and len(set(alive.sum(-1).tolist())) > 1  # adaptive rows, different counts
        rope_3d = isinstance(pos, torch.Tensor) and pos.dim() == 3
        if ragged or group.rows is not None or group.n_images != 1 or rope_3d:
            raise NotImplementedError(
                "renumbered positions (VisionDrop positions='official') need one image per sample, the same number "
                "of visual tokens in every sample and 1-D RoPE (LLaVA-1.5 / LLaVA-NeXT, as the official code); use "
                "positions='original'"
            )

    def _inputs(self, layer: nn.Module, hidden: torch.Tensor, kw: dict, group: _Group) -> StageInputs:
        cos, sin = compat.rotary_tables(kw, self._layer_index)
        rows = group.rows
        return StageInputs(
            layer=layer, hidden=_take_rows(hidden, rows), cos=_take_rows(cos, rows, -3), sin=_take_rows(sin, rows, -3),
            mask=_take_rows(compat.layer_mask(kw), rows), image_pos=_take_rows(self.current.image_pos, rows)[:, : group.count],
            rope=self.rope, n_images=group.n_images, keep=group.keep, positions=_take_rows(self.current.pos, rows),
            budget=group.budget, prompt=self._prompt_rows(rows), columns=_take_rows(self.current.cols, rows),
        )

    def _prompt_rows(self, rows: torch.Tensor | None) -> PromptView | None:
        pr = self.current.prompt
        if pr is None:
            return None
        return PromptView(_take_rows(pr.hidden, rows), _take_rows(pr.is_img, rows), _take_rows(pr.pad, rows))

    def _decode_kwargs(self, index: int, kwargs: dict, queries: int) -> dict:
        out = self._decode_mask(index, kwargs, queries)
        shift = self.current.layer_shift.get(index)
        if shift is not None:  # renumbered: the new tokens sit ``shift`` positions earlier (per row)
            (cos, sin), (full_cos, full_sin) = compat.rotary_tables(out, index), self.current.rope_full
            rows = shift.view(-1, 1)
            out["position_embeddings"] = shift_rope(cos, sin, compat.table_rows(full_cos, rows),
                                                    compat.table_rows(full_sin, rows), full_cos[..., :1, :])
        return out

    def _decode_mask(self, index: int, kwargs: dict, queries: int) -> dict:
        p = self.current
        cols, dead = p.layer_cols.get(index), p.layer_dead.get(index)
        if cols is None or (cols.shape[1] == p.prompt_len and dead is None):
            return dict(kwargs)
        mask = compat.layer_mask(kwargs)
        out = dict(kwargs)
        if mask is not None:
            kv = mask.shape[-1]
            new = torch.arange(p.prompt_len, kv, device=cols.device).expand(cols.shape[0], -1)
            mask = _gather_seq(mask, torch.cat([cols, new], 1), 3)
        elif dead is not None:  # no mask from the model (SDPA, no padding): only the dead columns need one
            keys = compat.layer_cache_length(kwargs, index) + queries
            mask = self._built_mask(queries, keys, cols.device)
        else:
            return out
        out["attention_mask"] = mask if dead is None else _hide_columns(mask, dead, own_rows=False)
        return out
