"""FLOPs of a whole prefill (vision tower + projector + LLM) at the depths built, for ``vlprune bench``'s bound."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from .flops import layer_flops, tokens_per_layer
from .presets import ModelShape
from .registry import get_method
from .speed_models import QWEN_PATCH_IN, ImageLayout, llava_layout


# -- FLOPs of the whole prefill ----------------------------------------------------------------------------
def llm_layer_flops(n: int, shape: ModelShape) -> float:
    """One decoder layer over n tokens: eq. 6 (``flops.layer_flops``) with the key/value projections at their real
    width ``d * kv_heads / heads``: ``4 n d^2 + 2 n^2 d + 3 n d m - 2 n d (d - d_kv)`` (eq. 6 when there is no GQA)."""
    d_kv = shape.hidden * shape.kv_heads // shape.heads
    return layer_flops(n, shape.hidden, shape.ffn) - 2 * n * shape.hidden * (shape.hidden - d_kv)


def clip_tower_flops(shape: ModelShape, blocks: int, rows: Optional[list[int]] = None) -> float:
    """One CLIP tile, n = patches + 1 ([CLS]): ``n 3 p^2 D_v + blocks (4 n D_v^2 + 2 n^2 D_v + 2 n D_v M_v)``;
    ``rows``: the rows each block runs on where a method prunes inside the tower (FlowCut), else n everywhere."""
    n = (shape.image_size // shape.patch_size) ** 2 + 1
    dv, mv = shape.vision_hidden, shape.vision_ffn
    rows = rows if rows is not None else [n] * blocks
    return n * 3 * shape.patch_size**2 * dv + sum(4 * r * dv * dv + 2 * r * r * dv + 2 * r * dv * mv for r in rows)


def qwen_vit_flops(shape: ModelShape, image: ImageLayout) -> float:
    """Qwen2.5-VL ViT + merger on one image of N = (h/p)(w/p) patches, width D_v, SwiGLU width M_v, L_v blocks:

        patch embedding  N * (3 * 2 * p^2) * D_v                     (3 channels x 2 frames per patch)
        every block      4 N D_v^2 + 3 N D_v M_v                     (qkv + proj; gate, up, down)
        attention        2 D_v * N^2          in a full-attention block,
                         2 D_v * sum_w n_w^2  in a window block (n_w patches in window w: 112 px = 8x8 patches,
                                              smaller at the bottom / right edges)
        merger           (N / 4) * ((4 D_v)^2 + 4 D_v d)            (2x2 patches -> one d-wide LLM token)

    A video of S temporal slices (2 frames each): N counts every slice's patches, and both kinds of attention stay
    within a slice (``cu_seqlens`` per slice): S (N/S)^2 in a full-attention block, S sum_w n_w^2 in a window block.

    Every method runs all of it: Qwen2.5-VL selects among the merger's outputs."""
    n = image.patches * image.merge**2
    dv, mv, unit = shape.vision_hidden, shape.vision_ffn, image.merge**2
    per_slice = n // image.slices
    attn = 0
    for block in range(shape.vision_layers):
        attn += image.slices * (per_slice * per_slice if block in image.full_blocks
                                else sum(w * w for w in image.windows))
    blocks = shape.vision_layers * (4 * n * dv * dv + 3 * n * dv * mv) + 2 * dv * attn
    merger = image.patches * ((unit * dv) ** 2 + unit * dv * shape.hidden)
    return n * QWEN_PATCH_IN * shape.patch_size**2 * dv + blocks + merger


def prefill_flops(shape: ModelShape, method: Optional[str], keep: Optional[int], text_tokens: int,
                  batch: int = 1, image: Optional[ImageLayout] = None, newlines: Optional[int] = None) -> float:
    """FLOPs of one prefill at the built depths, in the papers' convention (eq. 6 counts a multiply-add once).

    ``image`` is the layout of the one image per sample (default: LLaVA-1.5 from ``shape``).
    vision tower: LLaVA-1.5 / NeXT: ``clip_tower_flops`` per tile (NeXT: base + grid tiles; Video-LLaVA: per
        frame, its [CLS] tokens counted in every LLM layer: ``shape.fixed_tokens``); Qwen2.5-VL:
        ``qwen_vit_flops`` (windows, full-attention blocks, merger).
    projector (LLaVA: 2-layer MLP) on the k tokens handed to the LLM: k * (D_v d + d^2); the unpruned model
        projects every tile's patches (NeXT unpads after projecting). Qwen's merger is counted with its ViT.
    LLM: sum over layers l of ``llm_layer_flops`` (eq. 6; GQA's narrower k/v for Qwen) with n_l = (visual tokens at
        layer l) + text tokens (visual tokens per layer from ``flops.tokens_per_layer``: encoder methods k
        everywhere, FastV all tokens before layer K). LLaVA-NeXT: the newline tokens are LLM tokens too: the
        unpruned model has one per grid row; encoder-side methods keep one per row that kept a patch: ``newlines``
        if given (the bench passes the count it measured), else one per row, the most there can be; in-LLM
        methods see and prune newlines like any placeholder (their k includes them).
    The vision tower runs on every patch for every method (selection happens at its output), except FlowCut's
    blocks after its cuts (counted at most: ``methods.flowcut.tower_rows``; LLaVA-NeXT: ``keep // 2`` per tile, no
    newline, ``keep`` tokens after LLM layer 1); HoloV projects every patch. The unpatched
    model and in-LLM methods run all L_v blocks; on LLaVA(-NeXT) encoder-side methods stop at the feature layer
    (``hidden_states[-2]``: L_v - 1 blocks), since the last block only feeds outputs LLaVA discards; on Qwen2.5-VL
    they run the whole ViT. The cost of the selection itself is not counted (it is overhead the measured
    speedup has to pay for). The depths are the built ones, so a trimmed LLM with a full vision tower gets a
    correspondingly smaller bound.
    """
    image = image or llava_layout(shape)
    stage = None if method in (None, "none") else get_stage(method)
    encoder_side = stage is not None and stage != "llm"
    if image.family == "qwen2_5_vl":
        vision, projector = qwen_vit_flops(shape, image), 0
        counts = tokens_per_layer(method, keep, shape, image.patches)
        extra = 0
    else:
        blocks = shape.vision_layers - (1 if encoder_side else 0)  # feature layer -2: the last block is skipped
        tile_patches = (shape.image_size // shape.patch_size) ** 2
        hooks = _method_module(method) if encoder_side else None
        rows = getattr(hooks, "tower_rows", None)  # FlowCut: fewer rows in the blocks after its cuts
        # FlowCut on LLaVA-NeXT: keep // 2 per tile in the tower, no newline, keep after LLM layer 1
        tiled = encoder_side and image.family in get_method(method).family_plans
        tower_keep = keep // 2 if tiled else keep
        vision = image.tiles * clip_tower_flops(shape, blocks, rows(tower_keep, tile_patches, blocks) if rows else None)
        in_llm = stage == "llm"
        # (Video-LLaVA's frame [CLS] tokens are ``shape.fixed_tokens``, added to every layer by tokens_per_layer)
        counts = tokens_per_layer(method, keep, replace(shape, family=image.family) if tiled else shape,
                                  image.patches + image.newlines if in_llm else image.patches)
        extra = 0 if in_llm or tiled else (image.newlines if newlines is None or not encoder_side else newlines)
        projected = counts[0] if encoder_side else image.tiles * tile_patches + shape.fixed_tokens
        if getattr(hooks, "PROJECTS_EVERY_PATCH", False):  # HoloV selects among the projected tokens
            projected = image.tiles * tile_patches
        projector = projected * (shape.vision_hidden * shape.hidden + shape.hidden * shape.hidden)
    llm = sum(llm_layer_flops(c + extra + text_tokens, shape) for c in counts)
    return float(batch * (vision + projector + llm))


def _method_module(method: str):
    """The module of a registered method's encoder side (optional FLOPs hooks: ``tower_rows``, ``PROJECTS_EVERY_PATCH``)."""
    import sys

    from .registry import get_method

    return sys.modules[get_method(method).encoder.__module__]


def get_stage(method: str) -> str:
    from .registry import get_method

    return get_method(method).stage
