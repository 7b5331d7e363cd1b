"""FlowCut's official encoder code run as the oracle for vlprune.methods.flowcut (test use only).

The code is the authors' PyPI package ``flowcut==1.0.2`` (pinned in requirements/lock.txt), unmodified:
``flowcut/modeling_clip_flowcut.py`` (``CLIPAttention_forward``, ``CLIPEncoderLayer_forward``,
``CLIPEncoder_forward``) and ``flowcut/utils_flowcut.py`` (``compute_score``, ``adaptive_prune_ratio``), the same
files as https://github.com/TungChintao/FlowCut commit a2ecd247cb3c605773ec317a0c246425b47abdbe (last changed in
1f9477b5), Apache License 2.0. The package's ``__init__`` imports LLaVA (``flowcut/main.py`` patches LLaVA's classes),
which is not installed here, so the two modules are loaded from the installed files without it.

The official functions replace the methods of transformers 4.x CLIP classes (``flowcut()`` assigns them to
``CLIPAttention.forward`` etc.); here they run as plain functions on small stand-ins that give them what they read
from ``self`` -- the real modules of a transformers 5.x CLIP block, plus transformers 4.x's ``CLIPAttention._shape``
(written below: ``view(bsz, seq_len, num_heads, head_dim).transpose(1, 2).contiguous()``) and the attributes
``flowcut.apply_flowcut_config`` sets (``target``, ``select_layer = len(layers) - 2``).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch


def load_modules(names: tuple[str, ...]) -> dict[str, types.ModuleType]:
    """The installed package's modules ``names`` (``flowcut/<name>.py``), executed unmodified as
    ``_flowcut_official.<name>`` without the package's LLaVA-importing ``__init__`` (each once)."""
    spec = importlib.util.find_spec("flowcut")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the FlowCut oracle needs the authors' package: pip install flowcut==1.0.2 "
                          "(requirements/lock.txt)")
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("_flowcut_official")
    package.__path__ = [str(root)]
    sys.modules.setdefault("_flowcut_official", package)
    for name in names:
        full = f"_flowcut_official.{name}"
        if full not in sys.modules:
            sub = importlib.util.spec_from_file_location(full, root / f"{name}.py")
            module = importlib.util.module_from_spec(sub)
            sys.modules[full] = module
            sub.loader.exec_module(module)
    return {name: sys.modules[f"_flowcut_official.{name}"] for name in names}


def _load_official() -> types.ModuleType:
    from transformers.models.clip import modeling_clip

    # the module imports transformers 4.x's ``CLIPVisionTransformer`` (unused by the functions run here; transformers
    # 5.x has no such class): a placeholder during the import only
    missing = not hasattr(modeling_clip, "CLIPVisionTransformer")
    if missing:
        modeling_clip.CLIPVisionTransformer = type("CLIPVisionTransformer", (), {})
    try:
        load_modules(("utils_flowcut", "modeling_clip_flowcut"))
    finally:
        if missing:
            del modeling_clip.CLIPVisionTransformer
    return sys.modules["_flowcut_official.modeling_clip_flowcut"]


official = _load_official()


class _Attention:
    """A transformers 5.x ``CLIPAttention``'s modules under the 4.x interface ``CLIPAttention_forward`` reads."""

    def __init__(self, attn) -> None:
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.scale, self.num_heads, self.head_dim = attn.scale, attn.num_heads, attn.head_dim
        self.dropout, self.training = 0.0, False

    def _shape(self, tensor, seq_len, bsz):  # transformers 4.x CLIPAttention._shape
        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def __call__(self, **kwargs):
        return official.CLIPAttention_forward(self, **kwargs)


class _Layer:
    def __init__(self, block) -> None:
        self.layer_norm1, self.layer_norm2, self.mlp = block.layer_norm1, block.layer_norm2, block.mlp
        self.self_attn = _Attention(block.self_attn)

    def __call__(self, *args, **kwargs):
        return official.CLIPEncoderLayer_forward(self, *args, **kwargs)


class _Encoder:
    def __init__(self, layers, target: int) -> None:
        self.layers = [_Layer(b) for b in layers]
        self.config = types.SimpleNamespace(output_attentions=False, output_hidden_states=False, use_return_dict=True)
        self.gradient_checkpointing, self.training = False, False
        self.target, self.select_layer = target, len(layers) - 2  # flowcut.apply_flowcut_config


@torch.no_grad()
def flowcut_llava_features(tower, pixel_values: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA-1.5 under ``flowcut(model, target_num=keep)`` (``select_feature='patch'``: ``target = keep + 1``): the
    pruned tower's ``hidden_states[-2][:, 1:]`` (what LLaVA's ``feature_select`` hands the projector) and the kept
    patch indices (``all_keep_indices``, see below). ``tower``: a transformers ``CLIPVisionModel``'s
    ``vision_model`` (or the ``CLIPVisionTransformer`` itself)."""
    tower = getattr(tower, "vision_model", tower)
    embeds = tower.pre_layrnorm(tower.embeddings(pixel_values))
    out, keep_indices = official.CLIPEncoder_forward(
        _Encoder(tower.encoder.layers, keep + 1), inputs_embeds=embeds, output_attentions=True,
        output_hidden_states=True, return_dict=True)
    # ``all_keep_indices`` starts as the token positions (0 = [CLS]) and is gathered with PATCH indices at every cut,
    # so after a cut it holds patch indices (keep of them); unpruned it is still the token positions
    if keep_indices.shape[1] == embeds.shape[1]:
        keep_indices = keep_indices[:, 1:] - 1
    return out.hidden_states[-2][:, 1:], keep_indices


adaptive_prune_ratio = sys.modules["_flowcut_official.utils_flowcut"].adaptive_prune_ratio
