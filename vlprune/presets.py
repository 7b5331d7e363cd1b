"""Shapes of the models the papers report, in one place (FLOPs formula, benchmark builds)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """LLM shape and visual-token count of a released checkpoint.

    layers / hidden (d) / ffn (m) feed the FLOPs formula; visual_tokens is the unpruned count per image
    (LLaVA-NeXT: 5 tiles of 576 at the paper's setting; Qwen2.5-VL: depends on resolution, 1280 at the
    common 1120x896-ish setting is NOT assumed: pass --tokens).
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


PRESETS: dict[str, ModelShape] = {
    "llava-1.5-7b": ModelShape("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", 32, 4096, 11008, 32, 32, 576),
    "llava-1.5-13b": ModelShape("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", 40, 5120, 13824, 40, 40, 576),
    "llava-next-7b": ModelShape("llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", 32, 4096, 11008, 32, 32, 2880),
    "qwen2.5-vl-7b": ModelShape(
        "qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", 28, 3584, 18944, 28, 4, 1024, vocab=152064,
        vision_layers=32, vision_hidden=1280, vision_ffn=3420, vision_heads=16, image_size=896, patch_size=14,
    ),
}


def get_preset(name: str) -> ModelShape:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
