"""Video-LLaVA (``VideoLlavaForConditionalGeneration``): LanguageBind image and video towers (CLIP-L/14, 224 px),
one 2-layer MLP projector, image and video placeholders in one prompt.

* Images: as LLaVA-1.5 (``image_tower``, feature layer -2, [CLS] dropped): N = 256 patch tokens per image.
* Videos (``pixel_values_videos``, (videos, T, 3, H, W), T = 8 from the processor): the ``video_tower`` runs every
  frame; transformers' video path keeps each frame's [CLS] row, so a video fills T x (1 + N) placeholders (8 x 257).
  The [CLS] tokens are never pruned, by any method (encoder-side or in the LLM): the pruned path is the T x N
  patches (Video-LLaVA's "2048 tokens" in the papers), and ``keep`` counts patches.

Budgets (``budget=``): "video" (default) -- ``keep`` patches per video across all its frames, ranked as ONE set
(``frames.FrameStack``: each frame scored with its own signals) and ``keep`` per image; "frame" -- ``keep``
patches per frame (and per image). After pruning a video is laid out frame by frame, [CLS] first, its kept
patches in raster order, then the tokens that stand for no single patch (``frames.pack_frames``). In-LLM methods
rank every patch token of a video (the frames' [CLS] tokens stay) and keep ``keep`` per image or per video.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import compat
from ..ops import repeat_per_sample, visual_mask
from .base import Adapter, PrunedImages
from .clip_signals import ClipVisionSignals, check_llava_feature_config
from .frames import FrameStack, ItemQuestions, pack_frames, walk_items

IMAGE_ARGS = ("pixel_values", "pixel_values_images")  # the image pixels' name from 5.23 / before


class VideoLlavaAdapter(Adapter):
    class_names = ("VideoLlavaForConditionalGeneration",)
    family = "video_llava"
    options = ("budget", "frames")
    takes_videos = True

    def __init__(self, model, budget: str = "video", frames: int = 8) -> None:
        super().__init__(model)
        cfg = model.config
        check_llava_feature_config(cfg, "Video-LLaVA")
        if budget not in ("video", "frame"):
            raise ValueError(f"budget must be 'video' (keep per video, across its frames) or 'frame' (keep per "
                             f"frame), got {budget!r}")
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise ValueError(f"frames (the most frames of a video, the range of keep) must be an int >= 1, got {frames!r}")
        self.budget, self.frames = budget, frames
        vc = cfg.vision_config
        self.side = vc.image_size // vc.patch_size
        self.n = self.side * self.side
        self._t = frames  # frames of the videos last seen
        self._kinds: list[int] = []  # placeholder id of every item of the last prompt walked (prompt order)
        self._fixed: list[torch.Tensor] | None = None  # per item of the last pruned prompt: its [CLS] tokens

    # -- prompt layout -----------------------------------------------------------------------------------------
    @property
    def per_item_budget(self) -> bool:
        return self.budget == "video"

    def tokens_per_image(self) -> int:
        """The range of ``keep``: the patches of a video of ``frames`` frames (budget "video") or of one frame."""
        return self.n * (self.frames if self.budget == "video" else 1)

    def has_visual_inputs(self, call: dict[str, Any]) -> bool:
        return any(call.get(name) is not None for name in (*IMAGE_ARGS, "pixel_values_videos"))

    def observe(self, call: dict[str, Any]) -> None:
        videos = call.get("pixel_values_videos")
        if isinstance(videos, torch.Tensor):
            if videos.dim() != 5:
                raise ValueError(f"pixel_values_videos of shape {tuple(videos.shape)}: expected (videos, frames, 3, H, W)")
            self._t = int(videos.shape[1])

    def _walk(self, input_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
        img, vid = self.image_token_id, self.video_token_id
        counts = visual_mask(input_ids, self.visual_token_ids)
        total = int(counts.sum())
        sizes = {img: [self.n] * (total // self.n + 1), vid: [self._t * (self.n + 1)] * (total // (self.n + 1) + 1)}
        rows = walk_items(input_ids, sizes)
        if rows is None:
            raise ValueError(f"the prompt's placeholders do not split into images of {self.n} tokens and videos of "
                             f"{self._t} x {self.n + 1} tokens (pixel_values_videos holds {self._t} frames per video)")
        self._kinds = [kind for row in rows for kind, _ in row]
        return rows

    def images_per_sample(self, input_ids: torch.Tensor, tokens_per_image: list[int] | None = None) -> list[int]:
        return [len(row) for row in self._walk(input_ids)]

    def repeat_samples(self, per_sample: list[int], r: int) -> None:
        if self._fixed is not None and len(self._fixed) == sum(per_sample):  # not yet seen repeated
            self._fixed = repeat_per_sample(self._fixed, per_sample, r)

    def llm_visual_mask(self, input_ids: torch.Tensor, after_encoder: bool = False) -> torch.Tensor:
        """Every placeholder except the frames' [CLS] tokens: of the unpruned prompt (the first of every 1 + N
        tokens of a video), or of the prompt the encoder step laid out (``pack_frames``)."""
        mask = visual_mask(input_ids, self.visual_token_ids)
        if after_encoder:
            fixed = self._fixed
        else:
            fixed = []
            for row in self._walk(input_ids):
                for kind, _ in row:
                    span = self.n if kind == self.image_token_id else self._t * (self.n + 1)
                    f = torch.zeros(span, dtype=torch.bool)
                    if kind == self.video_token_id:
                        f[:: self.n + 1] = True
                    fixed.append(f)
        if fixed is None or not any(bool(f.any()) for f in fixed):
            return mask
        cls = torch.zeros_like(mask)
        positions = torch.nonzero(mask)
        flat = torch.cat(fixed).to(mask.device)
        if flat.shape[0] != positions.shape[0]:
            raise ValueError(f"the prompt holds {positions.shape[0]} visual tokens, the pruned layout {flat.shape[0]}")
        chosen = positions[flat]
        cls[chosen[:, 0], chosen[:, 1]] = True
        return mask & ~cls

    def llm_layout(self):
        """Per item of the last prompt: its prunable tokens (patches), grid (frames stacked), identity map."""
        out = []
        for kind in self._kinds:
            t = 1 if kind == self.image_token_id else self._t
            out.append((t * self.n, (t * self.side, self.side), None))
        return out or None

    # -- encoder side ----------------------------------------------------------------------------------------
    def _source(self, tower: torch.nn.Module, pixels: torch.Tensor, run: Any, questions: Any) -> ClipVisionSignals:
        return ClipVisionSignals(tower, pixels.to(tower.dtype), self.model.config.vision_feature_layer,
                                 questions=questions, clip_text=run.clip_text, grid=(self.side, self.side),
                                 projector=self.model.model.multi_modal_projector)

    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        rows = self._walk(kwargs["input_ids"])
        order = [kind for row in rows for kind, _ in row]
        image_items = [i for i, kind in enumerate(order) if kind == self.image_token_id]
        video_items = [i for i, kind in enumerate(order) if kind == self.video_token_id]
        items: dict[int, tuple] = {}
        pixels = next((kwargs[a] for a in IMAGE_ARGS if kwargs.get(a) is not None), None)
        if image_items:
            if pixels is None or pixels.shape[0] != len(image_items):
                raise ValueError(f"the prompt holds {len(image_items)} images, pixel_values "
                                 f"{None if pixels is None else pixels.shape[0]}")
            self._prune_images(pixels, run, image_items, items)
        if video_items:
            videos = kwargs.get("pixel_values_videos")
            if videos is None or videos.shape[0] != len(video_items):
                raise ValueError(f"the prompt holds {len(video_items)} videos, pixel_values_videos "
                                 f"{None if videos is None else videos.shape[0]}")
            self._prune_videos(videos, run, video_items, items)
        out = PrunedImages(features=[], tokens_per_image=[], indices=[], assign=[], grids=[], llm_tokens=[])
        self._fixed = []
        for i in range(len(order)):
            feats, n_tokens, idx, assign, grid, fixed = items[i]
            out.features.append(feats)
            out.tokens_per_image.append(n_tokens)
            out.indices.append(idx)
            out.assign.append(assign)
            out.grids.append(grid)
            out.llm_tokens.append(int((~fixed).sum()))
            self._fixed.append(fixed)
        return out

    def _prune_images(self, pixels: torch.Tensor, run: Any, image_items: list[int], items: dict) -> None:
        questions = ItemQuestions(run.questions, image_items) if run.questions is not None else None
        source = self._source(self.model.model.image_tower, pixels, run, questions)
        sel = run.select(source)
        feats = sel.features if sel.projected else self.model.model.multi_modal_projector(sel.features)
        for b, item in enumerate(image_items):
            assign = sel.assign[b] if sel.assign is not None else None
            fixed = torch.zeros(feats.shape[1], dtype=torch.bool)
            items[item] = (feats[b], self.n, sel.indices[b], assign, (self.side, self.side), fixed)

    def _prune_videos(self, videos: torch.Tensor, run: Any, video_items: list[int], items: dict) -> None:
        v, t = videos.shape[:2]
        frames = self._source(self.model.model.video_tower, videos.flatten(0, 1), run, None)
        projector = self.model.model.multi_modal_projector
        cls_tokens = projector(frames.cls_feature())  # (v * t, D_llm): every frame's [CLS], kept as it is
        cache: dict = {}
        for j, item in enumerate(video_items):
            groups = [slice(j * t, (j + 1) * t)] if self.budget == "video" else \
                [slice(j * t + f, j * t + f + 1) for f in range(t)]
            pieces = []
            for g in groups:
                stack = FrameStack(frames, g, item, run.questions, cache)
                sel = run.select(stack)
                members = torch.arange((g.start - j * t) * self.n, (g.stop - j * t) * self.n)
                feats = sel.features[0] if sel.projected else projector(sel.features[0])
                pieces.append({"feats": feats, "index": members[sel.indices[0].cpu()],
                               "assign": sel.assign[0] if sel.assign is not None else None, "members": members})
            tokens, kept, assign, fixed = pack_frames(pieces, t, self.n, cls_tokens[j * t: (j + 1) * t])
            items[item] = (tokens, t * (self.n + 1), kept, assign, (t * self.side, self.side), fixed)

    def give_features(self, call: dict[str, Any], result: PrunedImages, per_sample: list[int]) -> dict[str, Any]:
        """Images and videos back to the model's own two branches, each as one (tokens, 1, D) tensor: the model
        flattens it, and ``generate()`` (beams, returned sequences) splits it along dim 0 by the placeholders of
        every prompt row, which one row per token always allows (pruned items differ in length)."""
        kinds = self._kinds
        rows = [kinds[sum(per_sample[:b]): sum(per_sample[:b + 1])] for b in range(len(per_sample))]
        for kind, modality, args in ((self.image_token_id, "image", IMAGE_ARGS),
                                     (self.video_token_id, "video", ("pixel_values_videos",))):
            feats = [f for f, k in zip(result.features, kinds) if k == kind]
            if feats:
                counts = [row.count(kind) for row in rows]
                call = compat.give_image_features(self.model, call, feats, counts, modality=modality,
                                                  pixel_args=args, pack=lambda fs: torch.cat(fs, 0).unsqueeze(1))
        return call
