"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles, unpadding and ``image_newline``.

One image = a base tile (the whole image at the tower's resolution, ``side x side`` patches) + ``nph x npw`` grid
tiles. The model packs them as: the base tile's patches (raster), then the grid tiles stitched into one
``(nph*side) x (npw*side)`` grid, unpadded (rows or columns that only hold letterbox padding are cut), flattened
row by row with one ``image_newline`` token after every row.

We call the patches an image shows the LLM its *patch space*: index ``i < S = side*side`` is patch i of the base
tile, index ``S + r*Wu + c`` is row r, column c of the unpadded ``Hu x Wu`` grid. Every signal (features, [CLS]
attention, keys, DeSAP's decoupled attention) is gathered from the tile that owns the patch, so scores stay aligned
with features through the same stitching and unpadding the model does.

Budgets (``vlprune.apply(..., budget=...)``):
  "global" (default): ``keep`` patches per image, chosen among all ``S + Hu*Wu`` patches of the base tile and the
     unpadded grid with ONE call of the method (scores of different tiles compete directly). An image with fewer
     patches than ``keep`` keeps them all. Range: ``1 <= keep <= S + S*max_tiles`` (``tokens_per_image()``).
  "tile": ``keep`` patches per tile (VisionZip/VisPruner's LLaVA-NeXT setting; their "640 tokens" = 5 x 128): the
     base tile and every grid tile are pruned separately; a grid tile is restricted to its patches that survive
     unpadding (a tile with fewer keeps them all; a tile cut away entirely gives nothing). Range: ``1 <= keep <= S``.
Newlines are not counted in ``keep`` (the papers' token counts leave them out too). After pruning, the kept grid
patches are laid out in raster order and, with ``newlines=`` (an adapter option):
  "rows" (default): one ``image_newline`` follows every grid row that kept at least one patch: the packed layout
     restricted to the survivors (at full budget: the model's own layout, token for token);
  "all": every row of the unpadded grid keeps its newline, even when none of its patches survived (a constant
     ``keep + Hu`` tokens per image of a given size);
  "none": no newline at all (VisionZip's official LLaVA-NeXT code drops them).
Tokens that do not stand for one patch in raster order (VisionZip's [CLS] and contextual tokens, i.e. rows before
``Selection.indices`` or after its increasing run) follow the grid, as in VisionZip's official LLaVA-NeXT code.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import compat
from ..ops import copy_to_device, repeat_per_sample
from .base import Adapter, PrunedImages
from .clip_signals import ClipVisionSignals, check_llava_feature_config


@dataclass
class _Layout:
    """Where the patches and LLM tokens of one image come from."""

    n_tiles: int
    grid: tuple[int, int]  # (Hu, Wu): unpadded grid of the grid tiles
    tile: torch.Tensor  # (N,) tile (0 = base) of each patch-space index
    patch: torch.Tensor  # (N,) patch index inside that tile
    tokens: int  # LLM placeholders of the unpruned image (patches + newlines)
    llm_to_patch: torch.Tensor  # (tokens,) patch-space index of every LLM token, -1 for a newline


def _best_resolution(size: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution

    return select_best_resolution(size, pinpoints)


def _unpadded_rows_cols(size: tuple[int, int], cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """The rows [r0, r1) and columns [c0, c1) that ``unpad_image`` keeps of a (cur_h, cur_w) feature grid."""
    oh, ow = size
    if ow / oh > cur_w / cur_h:
        new_h = int(round(oh * (cur_w / ow), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(ow * (cur_h / oh), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def images_from_counts(input_ids: torch.Tensor, image_token_id: int, sizes: list[int]) -> list[int]:
    """Images per sample, walking the per-image placeholder counts ``sizes`` (prompt order) over the rows."""
    out, i = [], 0
    for c in (input_ids == image_token_id).sum(-1).tolist():
        n = total = 0
        while total < c and i < len(sizes):
            total, i, n = total + sizes[i], i + 1, n + 1
        if total != c:
            raise ValueError(f"a sample holds {c} image tokens, which does not match its images ({sizes})")
        out.append(n)
    return out


def _subset_key(tiles: ClipVisionSignals, first: int, n_tiles: int, group: int) -> Callable[[], int]:
    """The seed key of one selection call (an image's tiles, one group of them), computed only if a seeded
    method asks: it hashes the tiles' pixels on the host (a device-to-host copy and a sync on a GPU)."""
    def key() -> int:
        image = zlib.crc32(str(tiles.image_keys()[first: first + n_tiles]).encode())
        return zlib.crc32(f"{image}/{group}".encode())

    return key


class _PatchSubset:
    """A ``SignalSource`` over chosen (tile, patch) pairs of a batch of CLIP tiles (one image, or one tile)."""

    def __init__(self, tiles: ClipVisionSignals, tile: torch.Tensor, patch: torch.Tensor, cls_tile: int,
                 image: int, questions: Any, cache: dict, key: Callable[[], int], grid: tuple[int, int]) -> None:
        # the (tile, patch) index is built on the host; one non-blocking copy to the tiles' device, not a
        # synchronising copy per signal
        device = tiles.pixel_values.device
        self.tiles, self.cls_tile = tiles, cls_tile
        self.tile, self.patch = copy_to_device(tile, device), copy_to_device(patch, device)
        self.image, self.questions, self._cache, self.key, self.grid = image, questions, cache, key, grid
        self.n_tiles: int | None = None  # set where the subset is one whole image (its tiles from ``cls_tile`` on)

    def _pick(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.tile.to(x.device), self.patch.to(x.device)].unsqueeze(0)

    def features(self) -> torch.Tensor:
        return self._pick(self.tiles.features())

    def cls_attention(self) -> torch.Tensor:
        return self._pick(self.tiles.cls_attention())

    def last_cls_attention(self) -> torch.Tensor:
        return self._pick(self.tiles.last_cls_attention())

    def projected_features(self) -> torch.Tensor:
        return self._pick(self.tiles.projected_features())

    def last_block_full_width(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self._pick(x) for x in self.tiles.last_block_full_width())

    def keys(self) -> torch.Tensor:
        return self._pick(self.tiles.keys())

    def cls_feature(self) -> torch.Tensor:
        return self.tiles.cls_feature()[self.cls_tile].unsqueeze(0)

    @property
    def image_tiles(self) -> Callable[[int], tuple[torch.Tensor, ...]] | None:
        """For a subset holding one whole image (``budget="global"``): a function of an early ViT block giving the
        members' tile (0 = the global image) and patch, and every tile's [CLS] attention, of the feature layer's
        block and of that early block, (T, S) each (HiRED). None for a per-tile subset."""
        if self.n_tiles is None:
            return None

        def signals(layer: int) -> tuple[torch.Tensor, ...]:
            rows = slice(self.cls_tile, self.cls_tile + self.n_tiles)
            late = self.tiles.cls_attention()[rows]
            early = self.tiles.layer_cls_attention(layer)[rows]
            return (self.tile - self.cls_tile).to(late.device), self.patch.to(late.device), late, early

        return signals

    def prune_tiles_in_encoder(self, step: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a subset holding one whole image: its tiles run the tower as ONE batch, ``step`` dropping rows between
        blocks (``ClipVisionSignals.prune_in_encoder``; FlowCut). Returns the feature layer's surviving rows
        (T, L', D), their positions in the unpruned tile sequence (T, L'; [CLS] = 0) and the subset's slot of every
        (tile, patch) (T, S), -1 where unpadding cut the patch away."""
        if self.n_tiles is None:
            raise ValueError("pruning inside the tower needs a whole image (budget='global')")
        hidden, origin = self.tiles.prune_in_encoder(step, slice(self.cls_tile, self.cls_tile + self.n_tiles))
        s2 = self.tiles.grid[0] * self.tiles.grid[1]
        slots = torch.full((self.n_tiles, s2), -1, dtype=torch.long, device=self.tile.device)
        slots[self.tile - self.cls_tile, self.patch] = torch.arange(self.tile.shape[0], device=self.tile.device)
        return hidden, origin, slots

    def decoupled(self, mode: str) -> torch.Tensor:
        if mode not in self._cache:
            self._cache[mode] = self.tiles.decoupled(mode)  # (tiles, 1+S, e), shared by every subset
        d = self._cache[mode]
        rows = d[self.tile.to(d.device), self.patch.to(d.device) + 1]
        return torch.cat([d[self.cls_tile, :1], rows], 0).unsqueeze(0)

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.questions is None:
            raise ValueError("no question encoder: pass clip=... (and processor=...) to vlprune.apply")
        return self.questions.rows(slice(self.image, self.image + 1), self.tiles.pixel_values.device)

    def has_question(self) -> bool:
        return self.questions is not None and self.questions.any_present(slice(self.image, self.image + 1))

    def image_keys(self) -> list[int]:
        return [self.key()]


def pack(pieces: list[dict], n_base: int, grid: tuple[int, int], n_patches: int,
         newline: torch.Tensor, newlines: str = "rows") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out the selections of one image like ``pack_image_features`` does, restricted to the survivors.

    pieces: per selection call, ``feats`` (k, D) projected tokens, ``index`` (m,) patch-space indices aligned with
    the last m rows, ``assign`` (M,) slot of each member patch or None, ``members`` (M,) their patch-space indices.
    Returns (tokens (L, D), kept patch-space indices (sorted), assign (n_patches,) LLM position or -1).
    """
    hu, wu = grid
    sp_feats, sp_index, tail_ref = [], [], []
    for p_i, piece in enumerate(pieces):
        k, m = piece["feats"].shape[0], piece["index"].shape[0]
        v = piece["index"]
        run = m
        if m > 1:
            bad = torch.nonzero(v[1:] <= v[:-1])
            run = int(bad[0]) + 1 if len(bad) else m
        extra = k - m
        tail_ref += [(p_i, j) for j in range(extra)]
        for j in range(run):
            sp_feats.append((p_i, extra + j))
            sp_index.append(int(v[j]))
        tail_ref += [(p_i, extra + j) for j in range(run, m)]
    order = sorted(range(len(sp_index)), key=lambda i: sp_index[i])
    rows: list[torch.Tensor] = []
    position: dict[tuple[int, int], int] = {}
    done = -1  # last grid row closed by a newline
    for o, i in enumerate(order):
        p_i, j = sp_feats[i]
        v = sp_index[i]
        if newlines == "all" and v >= n_base:
            while done < (v - n_base) // wu - 1:  # rows above this one that kept nothing
                rows.append(newline)
                done += 1
        position[(p_i, j)] = len(rows)
        rows.append(pieces[p_i]["feats"][j])
        if v >= n_base and newlines != "none":
            nxt = sp_index[order[o + 1]] if o + 1 < len(order) else None
            if nxt is None or (nxt - n_base) // wu != (v - n_base) // wu:
                rows.append(newline)
                done = (v - n_base) // wu
    if newlines == "all":
        rows += [newline] * (hu - 1 - done)
    for p_i, j in tail_ref:
        position[(p_i, j)] = len(rows)
        rows.append(pieces[p_i]["feats"][j])
    if hu == 0:  # no grid tiles: the model appends one newline after the base tile
        rows.append(newline)
    assign = torch.full((n_patches,), -1, dtype=torch.long)
    for p_i, piece in enumerate(pieces):
        k, m = piece["feats"].shape[0], piece["index"].shape[0]
        slot_pos = torch.tensor([position[(p_i, j)] for j in range(k)], dtype=torch.long)
        if piece["assign"] is not None:
            a = piece["assign"].cpu()
            assign[piece["members"].cpu()] = torch.where(a >= 0, slot_pos[a.clamp(min=0)], torch.full_like(a, -1))
        else:
            assign[piece["index"].cpu()] = slot_pos[k - m:]
    kept = torch.unique(torch.tensor(sp_index + [int(piece["index"][j]) for p_i, piece in enumerate(pieces)
                                                 for j in range(piece["index"].shape[0])], dtype=torch.long))
    return torch.stack(rows), kept, assign


class LlavaNextAdapter(Adapter):
    class_names = ("LlavaNextForConditionalGeneration",)
    family = "llava_next"
    options = ("budget", "newlines")

    def __init__(self, model, budget: str = "global", newlines: str = "rows") -> None:
        super().__init__(model)
        cfg = model.config
        check_llava_feature_config(cfg, "LLaVA-NeXT")
        if budget not in ("global", "tile"):
            raise ValueError(f"budget must be 'global' (keep per image) or 'tile' (keep per tile), got {budget!r}")
        if newlines not in ("rows", "all", "none"):
            raise ValueError(f"newlines must be 'rows', 'all' or 'none', got {newlines!r}")
        self.budget, self.newlines = budget, newlines
        vc = cfg.vision_config
        self.tile_px = vc.image_size
        self.side = vc.image_size // vc.patch_size
        self.pinpoints = [list(p) for p in cfg.image_grid_pinpoints]
        self._layouts: list[_Layout] | None = None

    # -- layout ----------------------------------------------------------------------------------------------
    def tokens_per_image(self) -> int:
        s2 = self.side * self.side
        if self.budget == "tile":
            return s2
        most = max((h // self.tile_px) * (w // self.tile_px) for h, w in self.pinpoints)
        return s2 * (1 + most)

    def layout(self, image_size: Any) -> _Layout:
        size = [int(x) for x in (image_size.tolist() if hasattr(image_size, "tolist") else image_size)]
        h, w = _best_resolution(size, self.pinpoints)
        nph, npw = h // self.tile_px, w // self.tile_px
        s = self.side
        s2 = s * s
        r0, r1, c0, c1 = _unpadded_rows_cols(size, nph * s, npw * s)
        rr = torch.arange(r0, r1).view(-1, 1)
        cc = torch.arange(c0, c1).view(1, -1)
        tile = (1 + (rr // s) * npw + cc // s).flatten()
        patch = ((rr % s) * s + cc % s).flatten()
        hu, wu = r1 - r0, c1 - c0
        grid_ids = (s2 + torch.arange(hu * wu).view(hu, wu))
        llm = torch.cat([grid_ids, torch.full((hu, 1), -1)], 1).flatten()
        return _Layout(
            n_tiles=1 + nph * npw, grid=(hu, wu),
            tile=torch.cat([torch.zeros(s2, dtype=torch.long), tile]),
            patch=torch.cat([torch.arange(s2), patch]),
            tokens=s2 + hu * (wu + 1), llm_to_patch=torch.cat([torch.arange(s2), llm]),
        )

    def observe(self, call: dict[str, Any]) -> None:
        sizes = call.get("image_sizes")
        if sizes is not None and (call.get("pixel_values") is not None or compat.is_prefill(call)):
            self._layouts = [self.layout(sz) for sz in sizes]

    def repeat_samples(self, per_sample: list[int], r: int) -> None:
        if self._layouts is not None and len(self._layouts) == sum(per_sample):  # not yet seen repeated
            self._layouts = repeat_per_sample(self._layouts, per_sample, r)

    def images_per_sample(self, input_ids: torch.Tensor, tokens_per_image: list[int] | None = None) -> list[int]:
        if not bool((input_ids == self.image_token_id).any()):
            return [0] * input_ids.shape[0]
        if self._layouts is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (from its processor) to lay out the image tokens")
        return images_from_counts(input_ids, self.image_token_id, [lay.tokens for lay in self._layouts])

    def llm_layout(self):
        if self._layouts is None:
            return None
        return [(lay.tokens, lay.grid, lay.llm_to_patch) for lay in self._layouts]

    # -- encoder side ----------------------------------------------------------------------------------------
    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        pixel_values, sizes = kwargs["pixel_values"], kwargs.get("image_sizes")
        if sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (from its processor)")
        layouts = [self.layout(sz) for sz in sizes]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pv[: lay.n_tiles] for pv, lay in zip(pixel_values, layouts)], 0)
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        model = self.model.model
        tower = model.vision_tower
        tiles = ClipVisionSignals(tower, pixel_values.to(tower.dtype), self.model.config.vision_feature_layer,
                                  clip_text=run.clip_text, grid=(self.side, self.side),
                                  projector=model.multi_modal_projector)
        cache: dict = {}
        s2 = self.side * self.side
        out = PrunedImages(features=[], tokens_per_image=[], indices=[], assign=[], grids=[])
        first = 0
        for i, lay in enumerate(layouts):
            if self.budget == "global":
                groups = [torch.arange(lay.tile.shape[0])]
            else:
                groups = [torch.nonzero(lay.tile == t)[:, 0] for t in range(lay.n_tiles)]
                groups = [g for g in groups if len(g)]
            pieces = []
            for g_i, members in enumerate(groups):
                cls_tile = first + int(lay.tile[members[0]])
                sub = _PatchSubset(tiles, first + lay.tile[members], lay.patch[members], cls_tile, i,
                                   run.questions, cache, _subset_key(tiles, first, lay.n_tiles, g_i), lay.grid)
                if self.budget == "global":
                    sub.n_tiles = lay.n_tiles
                sel = run.select(sub)
                projected = sel.projected
                vis, picked = sel.features[0], sel.indices[0]
                if sel.extras.get("unindexed_last"):  # HoloV: rows without a patch (zero tokens) follow the
                    order = picked.argsort()  # indexed ones, which need not be increasing; pack() wants them first
                    vis, picked = torch.cat([vis[picked.numel():], vis[: picked.numel()][order]]), picked[order]
                pieces.append({
                    "vis": vis, "index": members.to(picked.device)[picked].cpu(),
                    "assign": sel.assign[0] if sel.assign is not None else None, "members": members,
                })
            vis = torch.cat([p["vis"] for p in pieces], 0)
            proj = vis if projected else model.multi_modal_projector(vis)
            start = 0
            for p in pieces:
                n = p.pop("vis").shape[0]
                p["feats"] = proj[start: start + n]
                start += n
            newline = model.image_newline.to(proj.device, proj.dtype)
            feats, kept, assign = pack(pieces, s2, lay.grid, lay.tile.shape[0], newline, self.newlines)
            out.features.append(feats)
            out.tokens_per_image.append(lay.tokens)
            out.indices.append(kept)
            out.assign.append(assign)
            out.grids.append(lay.grid)
            first += lay.n_tiles
        return out
