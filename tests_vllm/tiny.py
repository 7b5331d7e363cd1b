"""A tiny random LLaVA-1.5 saved to disk the way llava-hf checkpoints are (config, weights, processor), for vLLM.

Head size 32 in the LLM: the smallest vLLM's CPU attention backend takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlprune.testing import word_tokenizer

GRID, PATCH = 8, 4  # 8x8 = 64 patches of 4 px: 32 px images
PROMPT = "user : <image> what color is the circle ? assistant :"
QUESTION = "what color is the circle ?"
# <s> + the message (vLLM tokenizes chat prompts without adding <s>); the word tokenizer splits on white space,
# so a chat message renders to PROMPT's tokens whatever vLLM puts between the image placeholder and the text
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}user : "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }} {% else %}<image> {% endif %}{% endfor %}{% endif %}"
    " assistant :{% endif %}{% endfor %}"
)


def build_tiny_llava(seed: int = 0):
    """(model, processor): a random ``LlavaForConditionalGeneration`` (CLIP tower + Llama) and its processor."""
    from transformers import CLIPImageProcessor, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(seed)
    tok = word_tokenizer()
    side = GRID * PATCH
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=side, patch_size=PATCH, projection_dim=24)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=text,
                      image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init is near-zero in places: spread the LM head so greedy tokens vary
        model.lm_head.weight.normal_(0, 1.0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    tok.chat_template = CHAT_TEMPLATE
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return model, processor


def save_tiny_llava(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny LLaVA + processor under ``path`` (float32) in the llava-hf hub layout and return it.

    transformers 5 writes the CLIP tower's weights as ``vision_tower.embeddings...``; the llava-hf checkpoints
    on the hub (and vLLM 0.32's loader) have ``vision_tower.vision_model.embeddings...``: renamed to match.
    """
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


def save_tiny_clip(model_dir: str | Path, path: str | Path) -> Path:
    """DeSAP's CLIP for the tiny LLaVA at ``model_dir``: a ``CLIPModel`` whose vision tower is the LLaVA's (as
    openai/clip-vit-large-patch14-336 is llava-1.5's) with a random text tower, + its tokenizer, saved under
    ``path``."""
    from transformers import LlavaForConditionalGeneration

    from vlprune.testing import tiny_clip_sharing_tower

    path = Path(path)
    llava = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    vision = llava.config.vision_config.to_dict()
    vision = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                     "image_size", "patch_size", "projection_dim")}
    torch.manual_seed(1)
    clip, tokenizer = tiny_clip_sharing_tower(vision, llava.model.vision_tower)
    clip.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of the tower's size."""
    rng = np.random.default_rng(seed)
    side = GRID * PATCH
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
