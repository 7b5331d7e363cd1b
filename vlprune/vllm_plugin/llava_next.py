"""LLaVA-NeXT in vLLM with encoder-side pruning (anyres tiles), laid out exactly as ``vlprune.apply`` lays it out.

vLLM fixes each image's placeholder count when the request is processed, so the count must follow from the
image's size alone. It does with ``newlines="all"`` (every unpadded grid row keeps its ``image_newline``:
``K + Hu`` tokens) and ``"none"`` (``K``), where K = ``min(keep, patches)`` (``budget="global"``) or the sum
over tiles of ``min(keep, tile's unpadded patches)`` (``budget="tile"``). vlprune.apply's default, ``"rows"``,
keeps a newline only after rows that kept a patch, which depends on the selection: refused, with that reason.
The embeddings are ``vlprune.models.llava_next.LlavaNextAdapter.prune_images`` on the plugin's tower: the same
code, hence the same tokens, as ``vlprune.apply(model, method, keep, budget=..., newlines=...)``.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..api import _Run
from ..models.llava_next import LlavaNextAdapter, _best_resolution, _unpadded_rows_cols
from ..registry import get_method
from .llava import PrunedClipTower
from .processing import PruneInfoMixin, PruneProcessorMixin, embed_per_setting
from .settings import PruneSettings

ARCH = "VlpruneLlavaNextForConditionalGeneration"


def next_groups(size: tuple[int, int], pinpoints: list, tile_px: int, side: int) -> tuple[int, list[int]]:
    """(Hu, patches per tile: base tile first, then each grid tile's unpadded patches) of an image (h, w)."""
    h, w = _best_resolution(list(size), pinpoints)
    nph, npw = h // tile_px, w // tile_px
    r0, r1, c0, c1 = _unpadded_rows_cols(size, nph * side, npw * side)
    tiles = [side * side]
    for i in range(nph):
        rows = max(0, min(r1, (i + 1) * side) - max(r0, i * side))
        for j in range(npw):
            tiles.append(rows * max(0, min(c1, (j + 1) * side) - max(c0, j * side)))
    return r1 - r0, tiles


class VlpruneLlavaNextProcessingInfo(PruneInfoMixin, LlavaNextProcessingInfo):
    family = "llava_next"
    def _geometry(self) -> tuple[list, int, int]:
        cfg = self.get_hf_config()
        vc = cfg.vision_config
        return [list(p) for p in cfg.image_grid_pinpoints], vc.image_size, vc.image_size // vc.patch_size

    def keep_limit(self) -> int:
        pinpoints, tile_px, side = self._geometry()
        if self.deployment.budget == "tile":
            return side * side
        most = max((h // tile_px) * (w // tile_px) for h, w in pinpoints)
        return side * side * (1 + most)

    def pruned_tokens(self, settings: PruneSettings, width: int, height: int) -> int:
        if not settings.prunes:
            return self.unpruned_tokens(width, height)
        hu, tiles = next_groups((height, width), *self._geometry())
        groups = [sum(tiles)] if settings.budget == "global" else [t for t in tiles if t]
        k = sum(min(settings.keep, g) for g in groups)
        return k + (hu if settings.newlines == "all" else 0) + (1 if hu == 0 else 0)


class VlpruneLlavaNextMultiModalProcessor(PruneProcessorMixin, LlavaNextMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    VlpruneLlavaNextMultiModalProcessor, info=VlpruneLlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class VlpruneLlavaNextForConditionalGeneration(PrunedClipTower, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT whose image embeddings are pruned by a vlprune method (config key ``vlprune``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config, "LLaVA-NeXT", "llava_next")

    def _adapter(self, settings: PruneSettings) -> LlavaNextAdapter:
        """vlprune's LLaVA-NeXT adapter over this model's modules (the attributes it reads)."""
        inner = SimpleNamespace(vision_tower=self.vision_tower, multi_modal_projector=self.multi_modal_projector,
                                image_newline=self.image_newline)
        adapter = LlavaNextAdapter(SimpleNamespace(config=self.config, model=inner), settings.budget,
                                   "rows" if not settings.prunes else settings.newlines)
        return adapter

    def _embed_pruned(self, image_input, fields: dict) -> tuple[torch.Tensor, ...]:
        pixel_values = image_input["pixel_values"]
        tiles = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else list(pixel_values.unbind(0))
        sizes = image_input["image_sizes"]

        def embed(idx: list[int], settings: PruneSettings, questions: list[str]) -> list[torch.Tensor]:
            return self.prune_images(torch.cat([tiles[i] for i in idx]), sizes[idx], settings, questions)

        return embed_per_setting(fields, len(tiles), self.prune, embed)

    @torch.no_grad()
    def prune_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, settings: PruneSettings,
                     questions: list[str]) -> list[torch.Tensor]:
        """The LLM-input tokens of each image (its tiles concatenated in ``pixel_values``, 4-D)."""
        adapter = self._adapter(settings)
        if settings.prunes:
            method, keep, config = get_method(settings.method), settings.keep, settings.config()
        else:  # every patch, raster order: the model's own layout (newlines="rows" at full budget)
            method, keep, config = get_method("random"), adapter.tokens_per_image(), get_method("random").config_cls()

        def select(source):
            return method.encoder(source, min(keep, source.features().shape[1]), config)

        batch = self._question_batch(settings, questions, pixel_values.device)
        return adapter.prune_images({"pixel_values": pixel_values, "image_sizes": image_sizes},
                                    _Run(select, batch, self.clip_text)).features
