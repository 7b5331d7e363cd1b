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
from typing import Any

import torch

from .base import Adapter, PrunedImages
from .llava_next import images_from_counts


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
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        tokens = self.embed_tokens(ids).float()
        mean = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return tokens, mask, mean


class _QwenImage:
    """``SignalSource`` of one image (B = 1) of a Qwen2.5-VL vision pass."""

    def __init__(self, vit: "_VisionPass", i: int, question: str | None, encoder: Any) -> None:
        self.vit, self.i, self._question, self.encoder = vit, i, question, encoder
        t, h, w = vit.grids[i]
        self.grid = (h // vit.merge, w // vit.merge)

    def _img(self, per_unit_raster: torch.Tensor) -> torch.Tensor:
        lo, hi = self.vit.unit_ranges[self.i]
        return per_unit_raster[lo:hi].unsqueeze(0)

    def features(self) -> torch.Tensor:
        return self._img(self.vit.merged)

    def cls_attention(self) -> torch.Tensor:
        return self._img(self.vit.received)

    def keys(self) -> torch.Tensor:
        return self._img(self.vit.keys)

    def cls_feature(self) -> None:
        return None

    def decoupled(self, mode: str) -> torch.Tensor:
        rows = self._img(self.vit.decoupled(mode))
        return torch.cat([rows.mean(1, keepdim=True), rows], 1)

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.encoder is None or self._question is None:
            raise ValueError("no question encoder: pass processor=... to vlprune.apply")
        tokens, mask, glob = self.encoder.encode([self._question])
        dev = self.vit.merged.device
        return tokens.to(dev), mask.to(dev), glob.to(dev)

    def image_keys(self) -> list[int]:
        return [self.vit.image_keys[self.i]]


class _VisionPass:
    """One run of the Qwen2.5-VL ViT with the scoring block's input captured; signals per merged token."""

    def __init__(self, visual: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, block: int) -> None:
        from transformers.vision_utils import get_vision_window_index

        self.visual = visual
        self.merge = visual.spatial_merge_size
        self.unit = self.merge**2
        self.grids = [tuple(int(x) for x in g) for g in grid_thw.tolist()]
        self.block = visual.blocks[block]
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
        self.x, self.cu, self.pe = captured["x"], captured["cu"], captured["pe"]
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=self.merge, window_size=visual.window_size, patch_size=visual.patch_size,
        )
        self.reverse = torch.argsort(window_index.to(self.merged.device))
        counts = [t * h * w // self.unit for t, h, w in self.grids]
        bounds = [0] + torch.tensor(counts).cumsum(0).tolist()
        self.unit_ranges = list(zip(bounds[:-1], bounds[1:]))
        flat = pixel_values.detach().float().cpu()
        patch_bounds = [b * self.unit for b in bounds]
        self.image_keys = [zlib.crc32(flat[a:b].numpy().tobytes()) for a, b in zip(patch_bounds[:-1], patch_bounds[1:])]
        self._decoupled: dict[str, torch.Tensor] = {}
        attn = self.block.attn
        self.heads = attn.num_heads
        normed = self.block.norm1(self.x)
        self.q, self.k, self.v = attn.qkv(normed).reshape(normed.shape[0], 3, self.heads, -1).permute(1, 0, 2, 3).unbind(0)
        self.received = self._to_raster(self._received().view(-1, self.unit).sum(-1))
        self.keys = self._to_raster(self.k.float().mean(1).view(-1, self.unit, self.k.shape[-1]).mean(1))

    def _to_raster(self, per_unit_window: torch.Tensor) -> torch.Tensor:
        return per_unit_window[self.reverse]

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.pe
        cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
        x = x.float()
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def _segments(self) -> list[tuple[int, int]]:
        cu = self.cu.tolist()
        return [(a, b) for a, b in zip(cu[:-1], cu[1:]) if b > a]

    def _received(self, chunk: int = 1024) -> torch.Tensor:
        """Mean attention each patch receives (head mean, query mean over its attention scope): (patches,) window order."""
        q, k = self._rope(self.q), self._rope(self.k)
        scale = self.block.attn.scaling
        out = torch.zeros(q.shape[0], device=q.device)
        for a, b in self._segments():
            kt = k[a:b].transpose(0, 1)  # (H, n, d)
            acc = torch.zeros(b - a, device=q.device)
            for s in range(a, b, chunk):
                qs = q[s: min(b, s + chunk)].transpose(0, 1)  # (H, c, d)
                acc += torch.softmax(qs @ kt.transpose(1, 2) * scale, -1).sum((0, 1))
            out[a:b] = acc / (self.heads * (b - a))
        return out

    def decoupled(self, mode: str) -> torch.Tensor:
        """DeSAP eq. 2 on the scoring block (pair ``mode``), then the model's merger: (units, D_llm), raster order."""
        if mode not in self._decoupled:
            proj = {"q": self._rope(self.q), "k": self._rope(self.k), "v": self.v.float()}
            if mode not in ("qq", "qk", "kk", "vv"):
                raise ValueError(f"decoupled attention mode must be one of qq/qk/kk/vv, got {mode!r}")
            a_all, b_all, v_all = proj[mode[0]], proj[mode[1]], self.v.float()
            scale = self.block.attn.scaling
            out = torch.zeros_like(v_all)
            for a, b in self._segments():
                probs = torch.softmax(a_all[a:b].transpose(0, 1) @ b_all[a:b].transpose(0, 1).transpose(1, 2) * scale, -1)
                out[a:b] = (probs @ v_all[a:b].transpose(0, 1)).transpose(0, 1)
            attn = self.block.attn
            a_d = attn.proj(out.reshape(out.shape[0], -1).to(self.x.dtype))
            self._decoupled[mode] = self._to_raster(self.visual.merger(a_d))
        return self._decoupled[mode]


class Qwen2_5_VLAdapter(Adapter):
    class_names = ("Qwen2_5_VLForConditionalGeneration",)
    family = "qwen2_5_vl"
    options = ("vision_layer", "max_tokens")

    def __init__(self, model, vision_layer: int = -1, max_tokens: int = 16384) -> None:
        super().__init__(model)
        depth = len(model.model.visual.blocks)
        if not -depth <= vision_layer < depth:
            raise ValueError(f"vision_layer must index one of the {depth} ViT blocks, got {vision_layer}")
        self.vision_layer = vision_layer % depth
        self.max_tokens = int(max_tokens)
        self._sizes: list[int] | None = None
        self._pruned: PrunedImages | None = None
        self._grids: list[tuple[int, int]] | None = None

    def tokens_per_image(self) -> int:
        """Upper bound of ``keep``: the processor's default max_pixels (12845056) gives at most 16384 merged tokens."""
        return self.max_tokens

    def observe(self, call: dict[str, Any]) -> None:
        thw = call.get("image_grid_thw")
        if thw is not None and (call.get("pixel_values") is not None or call.get("past_key_values") is None):
            m = self.model.config.vision_config.spatial_merge_size
            self._grids = [(int(h) // m, int(w) // m) for t, h, w in thw.tolist()]
            self._sizes = [int(t) * h * w for (t, _, _), (h, w) in zip(thw.tolist(), self._grids)]

    def images_per_sample(self, input_ids: torch.Tensor, tokens_per_image: list[int] | None = None) -> list[int]:
        if not bool((input_ids == self.image_token_id).any()):
            return [0] * input_ids.shape[0]
        if self._sizes is None:
            raise ValueError("Qwen2.5-VL needs image_grid_thw (from its processor) to lay out the image tokens")
        return images_from_counts(input_ids, self.image_token_id, self._sizes)

    def llm_layout(self):
        if self._sizes is None:
            return None
        return [(n, g, None) for n, g in zip(self._sizes, self._grids)]

    def question_encoder(self, tokenizer: Any) -> LlmEmbeddingQuestions:
        if tokenizer is None:
            raise ValueError("DeSAP on Qwen2.5-VL encodes the question with the LLM's embeddings: pass processor=...")
        return LlmEmbeddingQuestions(self.model.model.language_model.embed_tokens, tokenizer)

    # -- encoder side ----------------------------------------------------------------------------------------
    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        thw = kwargs.get("image_grid_thw")
        if thw is None:
            raise ValueError("Qwen2.5-VL needs image_grid_thw (from its processor)")
        vit = _VisionPass(self.model.model.visual, kwargs["pixel_values"], thw, self.vision_layer)
        out = PrunedImages(features=[], tokens_per_image=[], indices=[], assign=[], grids=[])
        for i in range(len(vit.grids)):
            q = run.image_questions[i] if run.image_questions is not None else None
            src = _QwenImage(vit, i, q, run.clip_text)
            sel = run.select(src)
            out.features.append(sel.features[0])
            out.tokens_per_image.append(src.features().shape[1])
            out.indices.append(sel.indices[0])
            out.assign.append(sel.assign[0] if sel.assign is not None else None)
            out.grids.append(src.grid)
        self._pruned = out
        return out

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
        the last rows of the features; a leading extra row takes the first one's), not simply the j-th column."""
        src = cols.clone()
        pruned = self._pruned
        if pruned is None:
            return src
        img = 0
        for b in range(ids.shape[0]):
            long_cols = torch.nonzero(ids[b] == self.image_token_id)[:, 0]
            short_slots = torch.nonzero(ids[b][cols[b]] == self.image_token_id)[:, 0]
            lo = short = 0
            while lo < long_cols.shape[0]:
                n, k = pruned.tokens_per_image[img], pruned.features[img].shape[0]
                index = pruned.indices[img].to(cols.device)
                index = torch.cat([index[:1].expand(k - index.shape[0]), index]) if index.shape[0] < k else index[:k]
                src[b, short_slots[short: short + k]] = long_cols[lo + index]
                lo, short, img = lo + n, short + k, img + 1
        return src
