"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): native-resolution ViT, window attention, 2x2 merger, M-RoPE.

What the LLM sees of an image is the merger's output: one token per 2x2 group of patches, in raster order on the
``(h/2) x (w/2)`` merged grid. Pruning happens on those merged tokens (they are the features the methods see and
merge, already in the LLM input space). Signals come from one scoring block of the ViT (default: the last block,
a full-attention block in Qwen2.5-VL-7B):

* no [CLS]: the saliency of a patch is the mean attention it RECEIVES (head mean, averaged over the queries of its
  attention scope: the image for a full-attention block, the window otherwise), as VisionZip/VisPruner do for
  models without [CLS]; a merged token's score is the sum over its 2x2 patches;
* inside the ViT the patches are in window order: every per-patch signal is grouped per 2x2 unit and put back in
  raster order with ``argsort(window_index)``, exactly like the model does after the merger;
* keys (VisionZip's merge metric): head-mean keys of the scoring block (before RoPE), averaged over the 2x2 group;
* lazily, per image: only the signals the method asks for are computed (``random`` scores nothing), and attention
  is reduced over chunks of query rows, never materialised as a whole (heads x N x N) matrix;
* M-RoPE: 3-D positions are computed on the UNPRUNED prompt with the model's ``get_rope_index`` and the kept columns
  are passed as ``position_ids``; ``model.model.rope_deltas`` is set for the shortened prompt so that cached decoding
  without explicit positions continues at ``max(position) + 1`` as the unpruned model would (``generate`` passes
  positions itself and extends them by +1 per token).

DeSAP without a text tower (see docs/models.md): the visual side is the decoupled q-q attention of the scoring
block on its input (no residual, no MLP; RoPE applied to q as the block does), mapped into the LLM input space by
the model's own merger; the text side is the LLM's input embeddings of the question's tokens; the global rows
(the paper's [CLS] ``v_s`` and [EOS] ``q_t``) are the means of the visual rows and of the question rows.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import compat
from ..ops import copy_to_device, repeat_per_sample, visual_mask
from .base import Adapter, PrunedImages
from .frames import walk_items


@dataclass
class LlmEmbeddingQuestions:
    """DeSAP's text side for families without a CLIP text tower: the LLM's own input embeddings of the question."""

    embed_tokens: torch.nn.Module
    tokenizer: Any
    max_length: int = 77

    @torch.no_grad()
    def encode(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token embeddings (B, T, D), mask (B, T), and their mean as the global text row (B, D)."""
        device = self.embed_tokens.weight.device
        rows = [self.tokenizer(q, add_special_tokens=False)["input_ids"][: self.max_length] if q else []
                for q in questions]
        width = max(1, max(len(r) for r in rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)  # built on the host, copied once
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        ids, mask = copy_to_device(ids, device), copy_to_device(mask, device)  # without blocking the host
        tokens = self.embed_tokens(ids).float()
        mean = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return tokens, mask, mean


class _QwenImage:
    """``SignalSource`` of one image (B = 1) of a Qwen2.5-VL vision pass; every signal is computed on first use."""

    family = "qwen2_5_vl"  # read by methods with a family-specific rule (HoloV's crop count and score order)

    def __init__(self, vit: "_VisionPass", i: int, questions: Any, item: int | None = None) -> None:
        self.vit, self.i, self.questions = vit, i, questions
        self.item = i if item is None else item  # the item's row in ``questions`` (images and videos, prompt order)
        t, h, w = vit.grids[i]
        self.grid = (t * h // vit.merge, w // vit.merge)  # a video: its temporal slices stacked vertically

    def features(self) -> torch.Tensor:
        lo, hi = self.vit.unit_ranges[self.i]
        return self.vit.merged[lo:hi].unsqueeze(0)

    def cls_attention(self) -> torch.Tensor:
        return self.vit.received(self.i).unsqueeze(0)

    def last_cls_attention(self) -> torch.Tensor:
        """The scoring block already feeds both the salient map and DeSAP's decoupled attention: the same map."""
        return self.cls_attention()

    def projected_features(self) -> torch.Tensor:
        """Qwen's features are the merger's output, already in the LLM input space."""
        return self.features()

    def keys(self) -> torch.Tensor:
        return self.vit.keys(self.i).unsqueeze(0)

    def window_order(self) -> torch.Tensor:
        """(units,) the raster unit at each position of the ViT's window order (this image's ``window_index``)."""
        lo, hi = self.vit.unit_ranges[self.i]
        return torch.argsort(self.vit.reverse[lo:hi] - lo)

    def cls_feature(self) -> None:
        return None

    def decoupled(self, mode: str) -> torch.Tensor:
        rows = self.vit.decoupled(self.i, mode).unsqueeze(0)
        return torch.cat([rows.mean(1, keepdim=True), rows], 1)

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.questions is None:
            raise ValueError("no question encoder: pass processor=... to vlprune.apply")
        return self.questions.rows(slice(self.item, self.item + 1), self.vit.merged.device)

    def has_question(self) -> bool:
        return self.questions is not None and self.questions.any_present(slice(self.item, self.item + 1))

    def image_keys(self) -> list[int]:
        return [self.vit.image_keys[self.i]]


class _VisionPass:
    """One run of the Qwen2.5-VL ViT with the scoring block's input captured; signals per merged token.

    Nothing is scored up front: each image's q/k/v of the scoring block and each signal a method asks for
    (``received``, ``keys``, ``decoupled``) are computed for that image alone on first use and cached. Attention
    is reduced over chunks of query rows in fp32 (at most ``chunk`` scores at a time), never as a whole
    (heads x n x n) matrix.
    """

    chunk: int = 1 << 22  # most fp32 attention scores (heads x query rows x keys) held at once: 16 MiB

    def __init__(self, visual: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, block: int,
                 chunk: int | None = None) -> None:
        from transformers.vision_utils import get_vision_window_index

        self.visual = visual
        self.merge = visual.spatial_merge_size
        self.unit = self.merge**2
        self.grids = [tuple(int(x) for x in g) for g in grid_thw.tolist()]
        self.block = visual.blocks[block]
        self.heads = self.block.attn.num_heads
        if chunk is not None:
            self.chunk = int(chunk)
        captured: dict = {}

        def hook(module, args, kwargs):
            captured["x"] = args[0] if args else kwargs["hidden_states"]
            captured["cu"] = kwargs["cu_seqlens"]
            captured["pe"] = kwargs["position_embeddings"]

        handle = self.block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            out = visual(pixel_values.to(visual.dtype), grid_thw=grid_thw)
        finally:
            handle.remove()
        self.merged = out.pooler_output  # (units, D_llm), raster order, all images
        self.x, self.pe = captured["x"], captured["pe"]
        self.cu = [int(c) for c in captured["cu"].tolist()]
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=self.merge, window_size=visual.window_size, patch_size=visual.patch_size,
        )
        self.reverse = torch.argsort(window_index.to(self.merged.device))
        counts = [t * h * w // self.unit for t, h, w in self.grids]
        bounds = [0] + torch.tensor(counts).cumsum(0).tolist()
        self.unit_ranges = list(zip(bounds[:-1], bounds[1:]))
        self._pixel_values = pixel_values
        self._cache: dict[tuple, Any] = {}

    @property
    def image_keys(self) -> list[int]:
        """A CRC32 of each image's pixel rows, computed on first use only (seeded methods ask for it; the copy
        to the host costs ~19 MB at 896 x 896, so nothing else pays for it)."""
        def compute():
            flat = self._pixel_values.detach().float().cpu()
            bounds = [(a * self.unit, b * self.unit) for a, b in self.unit_ranges]
            return [zlib.crc32(flat[a:b].numpy()) for a, b in bounds]  # the array's buffer, not a copy

        return self._cached(("image_keys",), compute)

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # -- layout of image i ---------------------------------------------------------------------------------
    def _patches(self, i: int) -> tuple[int, int]:
        """Image i's patch range in the ViT's (window) order: its units stay together, so it is contiguous."""
        lo, hi = self.unit_ranges[i]
        return lo * self.unit, hi * self.unit

    def _to_raster(self, i: int, per_unit_window: torch.Tensor) -> torch.Tensor:
        """Image i's per-unit rows from window order to raster order (its slice of ``argsort(window_index)``)."""
        lo, hi = self.unit_ranges[i]
        return per_unit_window[self.reverse[lo:hi] - lo]

    def _segments(self, i: int) -> list[tuple[int, int]]:
        """Attention scopes (full image or windows) of the scoring block inside image i, as local patch ranges."""
        a, b = self._patches(i)
        cu = [c - a for c in self.cu if a <= c <= b]
        return [(s, e) for s, e in zip(cu[:-1], cu[1:]) if e > s]

    # -- projections of the scoring block --------------------------------------------------------------------
    def _projections(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (patches, H, d) of image i: the block's ``qkv`` on ``norm1`` of its input, in the model's dtype."""
        def compute():
            a, b = self._patches(i)
            normed = self.block.norm1(self.x[a:b])
            return tuple(self.block.attn.qkv(normed).reshape(b - a, 3, self.heads, -1).permute(1, 0, 2, 3).unbind(0))

        return self._cached(("qkv", i), compute)

    def _rope(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The block's 2-D RoPE on image i's q or k, in fp32 (``apply_rotary_pos_emb_vision`` before its cast)."""
        a, b = self._patches(i)
        cos, sin = (p[a:b].unsqueeze(-2).float() for p in self.pe)
        x = x.float()
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def _rows(self, n_keys: int) -> int:
        """Query rows per chunk: at most ``chunk`` scores of (heads x rows x n_keys), at least one row."""
        return max(1, self.chunk // (self.heads * n_keys))

    def _softmax_chunks(self, q: torch.Tensor, k: torch.Tensor):
        """Yield (first row, probs (H, c, n)) of softmax(q k^T * scale) per head over chunks of query rows,
        q (n, H, d), k (n, H, d); at most ``chunk`` scores at a time."""
        scale = self.block.attn.scaling
        kt = k.permute(1, 2, 0)  # (H, d, n)
        step = self._rows(k.shape[0])
        for s in range(0, q.shape[0], step):
            scores = q[s: s + step].transpose(0, 1) @ kt  # (H, c, n)
            yield s, torch.softmax(scores.mul_(scale), -1)

    def _column_means(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Mean attention each key receives in one scope: mean over heads and queries of softmax(q k^T * scale),
        q (n, H, d), k (n, H, d) -> (n,), accumulated as column sums over chunks of query rows."""
        acc = torch.zeros(k.shape[0], device=k.device)
        for _, probs in self._softmax_chunks(q, k):
            acc += probs.sum((0, 1))
        return acc / (self.heads * q.shape[0])

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v per head in one scope, q/k/v (n, H, d) -> (n, H, d), over chunks of query rows."""
        vh = v.transpose(0, 1)  # (H, n, d)
        out = torch.empty_like(v)
        for s, probs in self._softmax_chunks(q, k):
            out[s: s + probs.shape[1]] = (probs @ vh).transpose(0, 1)
        return out

    # -- signals, per image, raster order on its merged grid -----------------------------------------------------
    def received(self, i: int) -> torch.Tensor:
        """(units_i,) mean attention received (head mean, query mean over its scope), summed over each 2x2 unit."""
        def compute():
            q, k, _ = self._projections(i)
            q, k = self._rope(i, q), self._rope(i, k)
            out = torch.cat([self._column_means(q[a:b], k[a:b]) for a, b in self._segments(i)])
            return self._to_raster(i, out.view(-1, self.unit).sum(-1))

        return self._cached(("received", i), compute)

    def keys(self, i: int) -> torch.Tensor:
        """(units_i, d) head-mean keys of the scoring block before RoPE, averaged over each 2x2 unit."""
        def compute():
            k = self._projections(i)[1].float().mean(1)
            return self._to_raster(i, k.view(-1, self.unit, k.shape[-1]).mean(1))

        return self._cached(("keys", i), compute)

    def decoupled(self, i: int, mode: str) -> torch.Tensor:
        """DeSAP eq. 2 on the scoring block (pair ``mode``, scopes as the block's), ``proj``, then the model's merger:
        (units_i, D_llm). The merger runs again on purpose: its input here is the decoupled attention, not the
        block stack's output, so the first pass's result cannot stand in for it."""
        if mode not in ("qq", "qk", "kk", "vv"):
            raise ValueError(f"decoupled attention mode must be one of qq/qk/kk/vv, got {mode!r}")

        def compute():
            q, k, v = self._projections(i)
            rotated = {"q": self._rope(i, q), "k": self._rope(i, k), "v": v.float()}
            left, right, v = rotated[mode[0]], rotated[mode[1]], rotated["v"]
            out = torch.cat([self._attend(left[a:b], right[a:b], v[a:b]) for a, b in self._segments(i)])
            a_d = self.block.attn.proj(out.reshape(out.shape[0], -1).to(self.x.dtype))
            return self._to_raster(i, self.visual.merger(a_d))

        return self._cached(("decoupled", i, mode), compute)


class Qwen2_5_VLAdapter(Adapter):
    class_names = ("Qwen2_5_VLForConditionalGeneration",)
    family = "qwen2_5_vl"
    options = ("vision_layer", "max_tokens")
    takes_videos = True

    def __init__(self, model, vision_layer: int = -1, max_tokens: int = 16384) -> None:
        super().__init__(model)
        depth = len(model.model.visual.blocks)
        if not -depth <= vision_layer < depth:
            raise ValueError(f"vision_layer must index one of the {depth} ViT blocks, got {vision_layer}")
        self.vision_layer = vision_layer % depth
        self.max_tokens = int(max_tokens)
        # per kind (placeholder id): merged tokens and (t*h, w) merged grid of every item of the last call, in order
        self._sizes: dict[int, list[int]] | None = None
        self._grids: dict[int, list[tuple[int, int]]] | None = None
        self._order: list[tuple[int, int]] | None = None  # (kind, index) of every item of the last prompt walked
        self._pruned: PrunedImages | None = None
        self._tails: list[bool] = []  # per item: rows past its indices stand for no patch (HoloV's zero tokens)

    def has_visual_inputs(self, call: dict[str, Any]) -> bool:
        return call.get("pixel_values") is not None or call.get("pixel_values_videos") is not None

    def tokens_per_image(self) -> int:
        """Upper bound of ``keep``: the processor's default max_pixels (12845056) gives at most 16384 merged tokens."""
        return self.max_tokens

    def observe(self, call: dict[str, Any]) -> None:
        grids = {self.image_token_id: call.get("image_grid_thw"), self.video_token_id: call.get("video_grid_thw")}
        pixels = self.has_visual_inputs(call)
        if any(g is not None for g in grids.values()) and (pixels or compat.is_prefill(call)):
            m = self.model.config.vision_config.spatial_merge_size
            self._sizes, self._grids, self._order = {}, {}, None
            for kind, thw in grids.items():
                rows = thw.tolist() if thw is not None else []
                self._grids[kind] = [(int(t) * int(h) // m, int(w) // m) for t, h, w in rows]
                self._sizes[kind] = [int(t) * int(h) * int(w) // (m * m) for t, h, w in rows]

    def repeat_samples(self, per_sample: list[int], r: int) -> None:
        order = self._order
        if self._sizes is None or order is None or len(order) != sum(per_sample):  # unknown, or seen repeated
            return
        rows, start = [], 0
        for n in per_sample:
            rows.append(order[start: start + n])
            start += n
        for kind in self._sizes:
            counts = [sum(1 for k, _ in row if k == kind) for row in rows]
            self._sizes[kind] = repeat_per_sample(self._sizes[kind], counts, r)
            self._grids[kind] = repeat_per_sample(self._grids[kind], counts, r)
        index = dict.fromkeys(self._sizes, 0)
        self._order = []
        for row in rows:
            for _ in range(r):
                for kind, _ in row:
                    self._order.append((kind, index[kind]))
                    index[kind] += 1

    def images_per_sample(self, input_ids: torch.Tensor, tokens_per_image: list[int] | None = None) -> list[int]:
        if not bool(visual_mask(input_ids, self.visual_token_ids).any()):
            return [0] * input_ids.shape[0]
        if self._sizes is None:
            raise ValueError("Qwen2.5-VL needs image_grid_thw / video_grid_thw (from its processor) to lay out the "
                             "visual tokens")
        rows = walk_items(input_ids, self._sizes)
        if rows is None:
            raise ValueError(f"the prompt's visual tokens do not match its images and videos ({self._sizes})")
        self._order = [item for row in rows for item in row]
        return [len(row) for row in rows]

    def llm_layout(self):
        if self._sizes is None or self._order is None:
            return None
        return [(self._sizes[k][i], self._grids[k][i], None) for k, i in self._order]

    def question_encoder(self, tokenizer: Any) -> LlmEmbeddingQuestions:
        if tokenizer is None:
            raise ValueError("DeSAP on Qwen2.5-VL encodes the question with the LLM's embeddings: pass processor=...")
        return LlmEmbeddingQuestions(self.model.model.language_model.embed_tokens, tokenizer)

    # -- encoder side ----------------------------------------------------------------------------------------
    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        """Images and videos of the call, each pruned alone (a video's temporal slices as one ranked set), in
        prompt order."""
        self.images_per_sample(kwargs["input_ids"])  # the prompt order of the items
        order = self._order
        slots = {item: i for i, item in enumerate(order)}
        chosen: dict[int, tuple] = {}
        for kind, pixels, grids in ((self.image_token_id, "pixel_values", "image_grid_thw"),
                                    (self.video_token_id, "pixel_values_videos", "video_grid_thw")):
            if kwargs.get(pixels) is None:
                continue
            thw = kwargs.get(grids)
            if thw is None:
                raise ValueError(f"Qwen2.5-VL needs {grids} with {pixels} (from its processor)")
            vit = _VisionPass(self.model.model.visual, kwargs[pixels], thw, self.vision_layer)
            for i in range(len(vit.grids)):
                if (kind, i) not in slots:
                    raise ValueError(f"{pixels} holds {len(vit.grids)} items, the prompt fewer placeholders")
                src = _QwenImage(vit, i, run.questions, item=slots[(kind, i)])
                chosen[slots[(kind, i)]] = (src, run.select(src))
        if len(chosen) != len(order):
            raise ValueError(f"the prompt holds {len(order)} images and videos, the call's pixels {len(chosen)}")
        out = PrunedImages(features=[], tokens_per_image=[], indices=[], assign=[], grids=[])
        self._tails = [bool(chosen[j][1].extras.get("unindexed_last")) for j in range(len(order))]
        for j in range(len(order)):
            src, sel = chosen[j]
            out.features.append(sel.features[0])
            out.tokens_per_image.append(src.features().shape[1])
            out.indices.append(sel.indices[0])
            out.assign.append(sel.assign[0] if sel.assign is not None else None)
            out.grids.append(src.grid)
        self._pruned = out
        return out

    def give_features(self, call: dict[str, Any], result: PrunedImages, per_sample: list[int]) -> dict[str, Any]:
        """Images and videos back to the model's own two branches (``mm_encoder_outputs`` "image" / "video")."""
        order = self._order
        rows, start = [], 0
        for n in per_sample:
            rows.append([k for k, _ in order[start: start + n]])
            start += n
        for kind, modality, arg in ((self.image_token_id, "image", "pixel_values"),
                                    (self.video_token_id, "video", "pixel_values_videos")):
            feats = [f for f, (k, _) in zip(result.features, order) if k == kind]
            if feats:
                call = compat.give_image_features(self.model, call, feats, [row.count(kind) for row in rows],
                                                  modality=modality, pixel_args=(arg,))
        return call

    def finish_call(self, original: dict[str, Any], call: dict[str, Any], cols: torch.Tensor,
                    valid: torch.Tensor) -> dict[str, Any]:
        """M-RoPE positions of the unpruned prompt, sliced to the kept columns; rope_deltas for the short prompt."""
        model = self.model.model
        ids = original["input_ids"]
        mask = original.get("attention_mask")
        pos = original.get("position_ids")
        if pos is None:
            types = original.get("mm_token_type_ids")
            if types is None:  # what the processor returns: 1 for image placeholders, 2 for video ones
                types = (ids == self.image_token_id).int()
                video = getattr(self.model.config, "video_token_id", None)
                if video is not None:
                    types = types.masked_fill(ids == video, 2)
            pos, _ = model.get_rope_index(
                ids, mm_token_type_ids=types, image_grid_thw=original.get("image_grid_thw"),
                video_grid_thw=original.get("video_grid_thw"), second_per_grid_ts=original.get("second_per_grid_ts"),
                attention_mask=mask,
            )
        elif pos.dim() == 2:
            pos = pos.unsqueeze(0).expand(3, -1, -1)
        pos = pos.expand(pos.shape[0], ids.shape[0], -1)
        src = self._source_columns(ids, cols)
        idx = src.unsqueeze(0).expand(pos.shape[0], -1, -1).to(pos.device)
        short = torch.gather(pos, 2, idx).masked_fill(~valid.to(pos.device).unsqueeze(0), 1)
        call["position_ids"] = short
        rows = pos[-3:]
        alive = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        top = rows.masked_fill(~alive.to(pos.device).unsqueeze(0), -1).amax((0, 2))
        real = valid.sum(-1) if mask is None else call["attention_mask"].sum(-1)
        model.rope_deltas = (top + 1 - real.to(top.device)).unsqueeze(1)
        return call

    def _source_columns(self, ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Original column whose position each shortened column takes. Text columns keep their own; the j-th kept
        placeholder of an image takes the column of the patch its token stands for (``indices`` are aligned with
        the last rows of the features; a leading extra row takes the first one's; HoloV's trailing zero tokens take
        the image's last placeholder column, the authors' ``adjust_ids`` index -1), not simply the j-th column."""
        src = cols.clone()
        pruned = self._pruned
        if pruned is None:
            return src
        img = 0
        visual = visual_mask(ids, self.visual_token_ids)
        for b in range(ids.shape[0]):
            long_cols = torch.nonzero(visual[b])[:, 0]
            short_slots = torch.nonzero(visual[b][cols[b]])[:, 0]
            lo = short = 0
            while lo < long_cols.shape[0]:
                n, k = pruned.tokens_per_image[img], pruned.features[img].shape[0]
                index = pruned.indices[img].to(cols.device)
                if index.shape[0] < k and self._tails[img]:
                    index = torch.cat([index, index.new_full((k - index.shape[0],), n - 1)])
                index = torch.cat([index[:1].expand(k - index.shape[0]), index]) if index.shape[0] < k else index[:k]
                src[b, short_slots[short: short + k]] = long_cols[lo + index]
                lo, short, img = lo + n, short + k, img + 1
        return src
