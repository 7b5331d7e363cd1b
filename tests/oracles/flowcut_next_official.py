"""FlowCut's official LLaVA-NeXT path run as the oracle for vlprune.methods.flowcut on LLaVA-NeXT (test use only).

The code is the authors' PyPI package ``flowcut==1.0.2`` (pinned in requirements/lock.txt), unmodified:
``flowcut/llava_arch.py`` (``prepare_inputs_labels_for_multimodal_flowcut``, ``restore_image_features_sorted``,
``unpad_mask``, ``encode_images_flowcut_multi``; identical to https://github.com/TungChintao/FlowCut commit
a2ecd247cb3c605773ec317a0c246425b47abdbe, lines 31-313) and ``flowcut/modeling_llama_flowcut.py`` (``LlamaModel_forward``,
``LlamaDecoderLayer_forward``, ``LlamaSdpaAttention_forward``; the same as commit a2ecd24 in those functions: the
package predates fc5d7a1, which only changed ``LlamaFlashAttention2_forward``), with the tower stage of
``flowcut_official.py`` (``modeling_clip_flowcut.py``, ``target = int(keep / 2) + 1`` as ``flowcut/main.py`` sets
for ``image_aspect_ratio='anyres'``). Apache License 2.0 (the repository's LICENSE; ``llava_arch.py`` carries
"Copyright 2023 Haotian Liu" and "Copyright 2025 Jintao Tong", Apache License 2.0).

The files import LLaVA and transformers 4.x names that are not here; during the import only, stand-in modules
give them: ``llava.constants`` (LLaVA's values: ``IGNORE_INDEX = -100``, ``IMAGE_TOKEN_INDEX = -200``),
``llava.mm_utils.get_anyres_image_grid_shape`` (LLaVA's, verbatim in holov_next_official.py) and
``transformers.modeling_attn_mask_utils`` (gone in transformers 5). Two module globals are then set to their
transformers 4.37 versions (written below), which the official functions were written against:
``apply_rotary_pos_emb(q, k, cos, sin, position_ids)`` and ``_prepare_4d_causal_attention_mask_for_sdpa`` (None for
a prompt without a mask, as 4.37 returns: SDPA's ``is_causal``). The official functions run on small stand-ins that
give them what they read from ``self``: the real modules of a transformers 5.x LLaVA-NeXT, and 4.37's
``rotary_emb(x, seq_len)`` (cos/sin tables of positions 0..seq_len-1).
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import torch

from .flowcut_official import flowcut_llava_features, load_modules
from .holov_next_official import get_anyres_image_grid_shape

IMAGE_TOKEN_INDEX = -200  # llava/constants.py


def _load(names: tuple[str, ...]) -> dict[str, types.ModuleType]:
    stubs = {
        "llava": types.ModuleType("llava"),
        "llava.constants": SimpleNamespace(IGNORE_INDEX=-100, IMAGE_TOKEN_INDEX=IMAGE_TOKEN_INDEX,
                                           DEFAULT_IMAGE_PATCH_TOKEN="<im_patch>", DEFAULT_IM_START_TOKEN="<im_start>",
                                           DEFAULT_IM_END_TOKEN="<im_end>"),
        "llava.mm_utils": SimpleNamespace(get_anyres_image_grid_shape=get_anyres_image_grid_shape),
        "transformers.modeling_attn_mask_utils": SimpleNamespace(
            AttentionMaskConverter=None, _prepare_4d_attention_mask=None, _prepare_4d_causal_attention_mask=None,
            _prepare_4d_causal_attention_mask_for_sdpa=None),
    }
    added = [k for k in stubs if k not in sys.modules]
    sys.modules.update({k: stubs[k] for k in added})
    try:
        return load_modules(names)
    finally:
        for k in added:
            del sys.modules[k]


_mods = _load(("utils_flowcut", "llava_arch", "modeling_llama_flowcut"))
arch, llama = _mods["llava_arch"], _mods["modeling_llama_flowcut"]


def _apply_rotary_pos_emb_437(q, k, cos, sin, position_ids, unsqueeze_dim=1):  # transformers 4.37
    cos = cos[position_ids].unsqueeze(unsqueeze_dim)
    sin = sin[position_ids].unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (llama.rotate_half(q) * sin)
    k_embed = (k * cos) + (llama.rotate_half(k) * sin)
    return q_embed, k_embed


def _causal_mask_for_sdpa_437(attention_mask, input_shape, inputs_embeds, past_key_values_length):
    if attention_mask is not None:
        raise NotImplementedError("[vlprune] the oracle runs prompts without an attention mask")
    return None  # 4.37: no mask and a full prompt -> None (SDPA's is_causal)


llama.apply_rotary_pos_emb = _apply_rotary_pos_emb_437
llama._prepare_4d_causal_attention_mask_for_sdpa = _causal_mask_for_sdpa_437


class _Rotary:
    """transformers 4.37's ``LlamaRotaryEmbedding.forward(x, seq_len)``: (seq_len, dim) cos/sin tables."""

    def __init__(self, rope) -> None:
        self.rope = rope

    def __call__(self, x, seq_len):
        cos, sin = self.rope(x, torch.arange(seq_len, device=x.device)[None])
        return cos[0], sin[0]


class _Attention:
    def __init__(self, attn, rope, i) -> None:
        cfg = attn.config
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.num_heads, self.num_key_value_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.hidden_size = attn.head_dim, cfg.hidden_size
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.rotary_emb, self.is_causal, self.attention_dropout, self.training = _Rotary(rope), True, 0.0, False
        self.layer_idx = i

    def __call__(self, **kwargs):
        return llama.LlamaSdpaAttention_forward(self, **kwargs)


class _Layer:
    def __init__(self, layer, rope, i, seen) -> None:
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.mlp, self.self_attn, self.seen = layer.mlp, _Attention(layer.self_attn, rope, i), seen

    def __call__(self, *args, **kwargs):
        out = llama.LlamaDecoderLayer_forward(self, *args, **kwargs)
        if len(out) > 1:  # [vlprune] record the LLM stage's keep_indices (the layer's last output), or force them
            if "force_keep" in self.seen:
                out = (*out[:-1], self.seen["force_keep"])
            self.seen["llm_keep"] = out[-1]
        return out


class _LlamaModel:
    """[vlprune] what ``LlamaModel_forward`` reads from ``self`` (the real modules of the tiny model's LLM)."""

    def __init__(self, lm, keep: int, seen: dict) -> None:
        self.layers = [_Layer(l, lm.rotary_emb, i, seen) for i, l in enumerate(lm.layers)]
        self.norm, self.embed_tokens = lm.norm, lm.embed_tokens
        self.config = SimpleNamespace(output_attentions=False, output_hidden_states=False, use_cache=False,
                                      use_return_dict=True)
        self.gradient_checkpointing, self.training = False, False
        self._use_flash_attention_2, self._use_sdpa = False, True
        self.target_num, self.prune_layer = keep, 1  # flowcut/main.py for image_aspect_ratio='anyres'


class _Tower:
    """[vlprune] the tower as ``CLIPVisionTower_FlowCut.forward`` returns it: (features, keep indices)."""

    def __init__(self, vision_tower, keep: int, seen: dict) -> None:
        self.vision_tower, self.keep, self.seen = vision_tower, keep, seen
        self.config = SimpleNamespace(image_size=vision_tower.config.image_size)

    def forward(self, images):
        feats, kept = flowcut_llava_features(self.vision_tower, images, int(self.keep / 2))
        self.seen["tower_keep"] = kept
        return feats, kept


class FlowCutLlava:
    """[vlprune] what ``prepare_inputs_labels_for_multimodal_flowcut`` reads from ``self``."""

    encode_images_flowcut_multi = arch.encode_images_flowcut_multi
    restore_image_features_sorted = arch.restore_image_features_sorted
    prepare_inputs_labels_for_multimodal = arch.prepare_inputs_labels_for_multimodal_flowcut

    def __init__(self, model, keep: int) -> None:
        self.seen: dict = {}
        lm = model.model.language_model
        self.model = _LlamaModel(lm, keep, self.seen)
        self.model.image_newline = model.model.image_newline
        self._tower = _Tower(model.model.vision_tower, keep, self.seen)
        self._model = SimpleNamespace(get_vision_tower=lambda: self._tower, mm_projector=model.model.multi_modal_projector,
                                      embed_tokens=lm.embed_tokens)
        self.config = SimpleNamespace(
            mm_patch_merge_type="spatial_unpad", image_aspect_ratio="anyres",
            image_grid_pinpoints=[[w, h] for h, w in model.config.image_grid_pinpoints])  # LLaVA: (width, height)
        self.device = lm.embed_tokens.weight.device

    def get_model(self):
        return self._model

    def get_vision_tower(self):
        return self._tower


@torch.no_grad()
def flowcut_next(model, input_ids: torch.Tensor, tiles: torch.Tensor, size_hw: tuple[int, int], keep: int):
    """The authors' LLaVA-NeXT path under ``flowcut(model, target_num=keep)`` on one prompt ``input_ids`` (1, L) with
    one ``IMAGE_TOKEN_INDEX`` and one image (its tiles (T, 3, t, t), HF size (height, width)). Returns (the LLM's
    input embeddings, its final hidden states (after the norm), what the run recorded: ``tower_keep`` (T, keep // 2)
    kept patches per tile, ``llm_keep`` (1, keep) kept visual tokens after layer 1)."""
    llava = FlowCutLlava(model, keep)
    out = llava.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, [tiles],
                                                    image_sizes=[(size_hw[1], size_hw[0])])
    embeds = out[4]
    final, _ = llama.LlamaModel_forward(llava.model, inputs_embeds=embeds, use_cache=False, return_dict=True)
    llava.seen["model"] = llava.model
    return embeds, final.last_hidden_state, llava.seen


@torch.no_grad()
def decode_reference(model, embeds: torch.Tensor, seen: dict, keep: int, new_ids: torch.Tensor) -> torch.Tensor:
    """[vlprune] What a cached decoding step of the authors' path computes, without a cache: ``LlamaModel_forward``
    on the prompt's LLM input ``embeds`` followed by the tokens ``new_ids`` (1, n), the visual tokens kept after
    layer 1 forced to the prompt's (``seen["llm_keep"]``; the official cached decoding keeps layers 0-1's full cache,
    the later layers' pruned one, and shifts the new tokens' positions by the dropped count). Returns the final
    hidden states of the new tokens (1, n, D)."""
    lm = model.model.language_model
    llama_model = _LlamaModel(lm, keep, {"force_keep": seen["llm_keep"]})
    for name in ("visual_token_pos", "visual_token_num", "last_instruct_pos"):
        setattr(llama_model, name, list(getattr(seen["model"], name)))
    llama_model.last_instruct_pos[0] += new_ids.shape[1]
    full = torch.cat([embeds, lm.embed_tokens(new_ids)], 1)
    final, _ = llama.LlamaModel_forward(llama_model, inputs_embeds=full, use_cache=False, return_dict=True)
    return final.last_hidden_state[:, -new_ids.shape[1]:]
