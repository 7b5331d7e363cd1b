"""Shapes of the models the papers report, in one place (FLOPs formula, benchmark builds)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """LLM shape and visual-token count of a released checkpoint.

    layers / hidden (d) / ffn (m) feed the FLOPs formula; visual_tokens is the unpruned count per image
    (LLaVA-NeXT: 5 tiles of 576 at the paper's setting; Qwen2.5-VL: depends on resolution, 1280 at the
    common 1120x896-ish setting is NOT assumed: pass --tokens), per video for video presets (what ``keep`` counts).
    frames: frames per video (1: an image preset); fixed_tokens: LLM tokens per video that no method prunes
    (Video-LLaVA: every frame's [CLS] token, 8 on top of its 2048 patch tokens).
    """

    name: str
    hf_id: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    visual_tokens: int
    vocab: int = 32064
    vision_layers: int = 24
    vision_hidden: int = 1024
    vision_ffn: int = 4096
    vision_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    frames: int = 1
    fixed_tokens: int = 0
    family: str = ""  # the adapter family where a method plans differently there (FlowCut on "llava_next")


PRESETS: dict[str, ModelShape] = {
    "llava-1.5-7b": ModelShape("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", 32, 4096, 11008, 32, 32, 576),
    "llava-1.5-13b": ModelShape("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", 40, 5120, 13824, 40, 40, 576),
    "llava-next-7b": ModelShape("llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", 32, 4096, 11008, 32, 32, 2880,
                                  family="llava_next"),
    "qwen2.5-vl-7b": ModelShape(
        "qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", 28, 3584, 18944, 28, 4, 1024, vocab=152064,
        vision_layers=32, vision_hidden=1280, vision_ffn=3420, vision_heads=16, image_size=896, patch_size=14,
    ),
    # Video-LLaVA-7B (DeSAP Table 7, VisPruner Table 3): 8 frames of 224 px, 8 x 256 = 2048 patch tokens (the
    # papers' count) + the 8 frames' [CLS] tokens transformers' VideoLlava class feeds the LLM too
    "video-llava-7b": ModelShape("video-llava-7b", "LanguageBind/Video-LLaVA-7B-hf", 32, 4096, 11008, 32, 32, 2048,
                                 image_size=224, frames=8, fixed_tokens=8),
    # Qwen2.5-VL-7B on a 16-frame video at 448x448 px per frame (an assumption: the processor's size depends on
    # the video): 8 temporal slices (2 frames each) x 16 x 16 merged tokens = 2048
    "qwen2.5-vl-7b-video": ModelShape(
        "qwen2.5-vl-7b-video", "Qwen/Qwen2.5-VL-7B-Instruct", 28, 3584, 18944, 28, 4, 2048, vocab=152064,
        vision_layers=32, vision_hidden=1280, vision_ffn=3420, vision_heads=16, image_size=448, patch_size=14,
        frames=16,
    ),
}


def get_preset(name: str) -> ModelShape:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
