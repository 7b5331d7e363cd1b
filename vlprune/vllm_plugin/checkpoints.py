"""Model directories vLLM can load for tests and ``vlprune bench --engine vllm``: no download.

- ``save_tiny_llava``: a tiny random LLaVA-1.5 (CLIP tower + 2-layer Llama) with its weights, in the llava-hf
  hub layout (``vision_tower.vision_model.*``, what vLLM 0.32's LLaVA loads);
- ``write_preset_llava``: config + processor only, at a preset's widths (e.g. LLaVA-1.5-7B), for
  ``load_format="dummy"`` (vLLM fills random weights);
- ``save_tiny_clip`` / ``save_preset_clip``: DeSAP's CLIP (text tower + visual projection) for either.
The tokenizer is ``vlprune.testing.word_tokenizer`` (offline); prompts use its words.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..presets import get_preset
from ..testing import SPECIALS, word_tokenizer

TINY_GRID, TINY_PATCH = 8, 4  # 8x8 = 64 patches of 4 px: 32 px images
# <s> + the message (vLLM tokenizes chat prompts without adding <s>); the word tokenizer splits on white space,
# so a chat message renders to the same tokens whatever vLLM puts between the image placeholder and the text
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}user : "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }} {% else %}<image> {% endif %}{% endfor %}{% endif %}"
    " assistant :{% endif %}{% endfor %}"
)


def _processor(side: int, patch: int) -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    tok = word_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def _llava_config(text: dict, vision: dict) -> Any:
    from transformers import LlamaConfig, LlavaConfig

    return LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=LlamaConfig(**text),
                       image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def build_tiny_llava(seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): a random ``LlavaForConditionalGeneration`` (head size 32 in the LLM: the smallest vLLM's
    CPU attention backend takes) and its processor."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    side = TINY_GRID * TINY_PATCH
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=side, patch_size=TINY_PATCH, projection_dim=24)
    text = dict(vocab_size=len(word_tokenizer()), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=2, eos_token_id=3)
    model = LlavaForConditionalGeneration(_llava_config(text, vision)).eval()
    with torch.no_grad():  # random init is near-zero in places: spread the LM head so greedy tokens vary
        model.lm_head.weight.normal_(0, 1.0)
    return model, _processor(side, TINY_PATCH)


def save_tiny_llava(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny LLaVA + processor under ``path`` (float32) in the llava-hf hub layout and return it.

    transformers 5 writes the CLIP tower's weights as ``vision_tower.embeddings...``; the llava-hf checkpoints
    (and vLLM 0.32's loader) have ``vision_tower.vision_model.embeddings...``: renamed to match."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    model, processor = build_tiny_llava(seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    hub = {(k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k): v
           for k, v in tensors.items()}
    save_file(hub, weights, metadata={"format": "pt"})
    return path


def _hub_layout(weights: Path) -> None:
    """Rename the CLIP tower's weights to the llava-hf hub layout vLLM 0.32 loads (``vision_tower.vision_model.*``)."""
    import re

    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    pattern = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")
    save_file({pattern.sub(r"\1vision_model.", k): v for k, v in tensors.items()}, weights, metadata={"format": "pt"})


def save_tiny_llava_next(path: str | Path, seed: int = 0) -> Path:
    """A tiny random LLaVA-NeXT (32 px tiles of 8x8 patches, pinpoints 1x2, 2x1, 2x2 tiles; 2-layer Llama of head
    size 32) + its processor under ``path``, in the hub layout."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor
    from transformers import LlavaNextProcessor, LlamaConfig

    path = Path(path)
    torch.manual_seed(seed)
    t = TINY_GRID * TINY_PATCH
    tok = word_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=t, patch_size=TINY_PATCH, projection_dim=24)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3)
    pinpoints = [[t, 2 * t], [2 * t, t], [2 * t, 2 * t]]
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=4, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)
        model.model.image_newline.normal_(0, 1.0)
    model.save_pretrained(path)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": t}, crop_size={"height": t, "width": t},
                                              image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=TINY_PATCH,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       chat_template=CHAT_TEMPLATE).save_pretrained(path)
    _hub_layout(path / "model.safetensors")
    return path


def save_tiny_clip(model_dir: str | Path, path: str | Path, seed: int = 1) -> Path:
    """DeSAP's CLIP for the LLaVA at ``model_dir``: a ``CLIPModel`` whose vision tower is the LLaVA's (as
    openai/clip-vit-large-patch14-336 is llava-1.5's) with a random text tower, + its tokenizer."""
    from transformers import AutoModelForImageTextToText

    from ..testing import tiny_clip_sharing_tower

    path = Path(path)
    llava = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    vc = llava.config.vision_config.to_dict()
    vision = {k: vc[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "image_size", "patch_size", "projection_dim")}
    torch.manual_seed(seed)
    clip, tokenizer = tiny_clip_sharing_tower(vision, llava.model.vision_tower)
    clip.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_preset_llava(name: str, path: str | Path, layers: int | None = None,
                       vision_layers: int | None = None) -> Path:
    """Config + processor of a LLaVA-1.5 preset (``vlprune.presets``) under ``path``, no weights: for vLLM's
    ``load_format="dummy"``. ``layers`` / ``vision_layers`` trim the decoder / CLIP tower (default: full)."""
    shape = get_preset(name)
    if shape.visual_tokens != (shape.image_size // shape.patch_size) ** 2:
        raise ValueError(f"{name}: vLLM benchmarks build LLaVA-1.5 presets (llava-1.5-7b, llava-1.5-13b)")
    path = Path(path)
    text = dict(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                num_hidden_layers=layers or shape.layers, num_attention_heads=shape.heads,
                num_key_value_heads=shape.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
                pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_ffn,
                  num_hidden_layers=vision_layers or shape.vision_layers, num_attention_heads=shape.vision_heads,
                  image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768,
                  hidden_act="quick_gelu")
    config = _llava_config(text, vision)
    config.dtype = "bfloat16"
    config.save_pretrained(path)
    _processor(shape.image_size, shape.patch_size).save_pretrained(path)
    return path


def save_preset_clip(name: str, path: str | Path, seed: int = 1) -> Path:
    """DeSAP's CLIP for a preset: a random CLIP-L/336-shaped text tower (768 wide, 12 layers, projection 768) and
    a visual projection from the preset's tower width; its own vision tower is one block (DeSAP reads only the
    text tower and the projections; the LVLM's tower supplies the image side)."""
    from transformers import CLIPConfig, CLIPModel

    shape = get_preset(name)
    path = Path(path)
    tok = word_tokenizer(specials=SPECIALS[:4], bos=False)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, projection_dim=768, eos_token_id=3,
                         bos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_hidden,
                           num_hidden_layers=1, num_attention_heads=shape.vision_heads, image_size=shape.image_size,
                           patch_size=shape.patch_size, projection_dim=768),
        projection_dim=768,
    )
    CLIPModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path
