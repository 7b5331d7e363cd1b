"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, feature layer -2, [CLS] dropped, 2-layer MLP."""
from __future__ import annotations

from typing import Any

from .base import Adapter, PrunedImages
from .clip_signals import ClipVisionSignals, check_llava_feature_config


class LlavaAdapter(Adapter):
    class_names = ("LlavaForConditionalGeneration",)
    family = "llava"

    def __init__(self, model) -> None:
        super().__init__(model)
        cfg = model.config
        check_llava_feature_config(cfg, "LLaVA-1.5")
        vc = cfg.vision_config
        self.side = vc.image_size // vc.patch_size

    def tokens_per_image(self) -> int:
        return self.side * self.side

    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        pixel_values = kwargs["pixel_values"]
        tower = self.model.model.vision_tower
        source = ClipVisionSignals(
            tower, pixel_values.to(tower.dtype), self.model.config.vision_feature_layer,
            questions=run.questions, clip_text=run.clip_text, grid=(self.side, self.side),
            projector=self.model.model.multi_modal_projector,
        )
        sel = run.select(source)
        feats = sel.features if sel.projected else self.model.model.multi_modal_projector(sel.features)
        n = pixel_values.shape[0]
        return PrunedImages(
            features=list(feats),
            tokens_per_image=[self.tokens_per_image()] * n,
            indices=list(sel.indices),
            assign=list(sel.assign) if sel.assign is not None else [None] * n,
            grids=[(self.side, self.side)] * n,
        )
