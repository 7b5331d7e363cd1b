"""Deepening init: start a deeper testbed LLM from a trained shallower one (``vlprune testbed build --llm-init``).

Each layer of the source LLM is repeated ``ratio = new / old`` times (Net2Net / StackBERT-style growth) and
every copy's residual outputs (``o_proj``, ``down_proj``) are scaled by ``1 / ratio``, so that the stack of
copies adds the source layer's update in ``ratio`` smaller steps (a forward-Euler split of ``x + f(x)``). The
deeper model starts close to the source's function and is then fine-tuned. What this implies for in-LLM
pruning: the new model reads the image where its source did (copies of source layer 0 come first), so a
method pruning at layer ``K`` of the deep model cuts inside what was the source's layer ``K // ratio``; the
fine-tuning may move that, the init does not.
"""

from __future__ import annotations

import torch

__all__ = ["deepen_from"]


@torch.no_grad()
def deepen_from(model, source) -> dict:
    """Copy ``source`` (a trained LLaVA of the same widths) into ``model`` (a LLaVA with a deeper LLM).

    Projector, embeddings, final norm and LM head are copied as they are; decoder layer ``i`` of ``model`` is
    source layer ``i * L_src // L_new`` with ``o_proj`` and ``down_proj`` scaled by ``L_src / L_new``.
    The vision tower is left alone (the caller loads it). Returns ``{"layer_map": [...], "scale": ...}``.
    """
    new_layers = model.model.language_model.layers
    old_layers = source.model.language_model.layers
    n_new, n_old = len(new_layers), len(old_layers)
    if n_new < n_old or n_new % n_old:
        raise ValueError(f"--llm-init needs an LLM depth that is a multiple of the source's ({n_old} layers), "
                         f"got {n_new}; pass --llm-layers {2 * n_old} or {3 * n_old}")
    src_cfg, cfg = source.config.text_config, model.config.text_config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if getattr(src_cfg, key) != getattr(cfg, key):
            raise ValueError(f"--llm-init source has {key}={getattr(src_cfg, key)}, the new LLM "
                             f"{getattr(cfg, key)}; only the depth may differ")
    model.model.multi_modal_projector.load_state_dict(source.model.multi_modal_projector.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(source.model.language_model.embed_tokens.state_dict())
    model.model.language_model.norm.load_state_dict(source.model.language_model.norm.state_dict())
    model.lm_head.load_state_dict(source.lm_head.state_dict())
    ratio = n_new // n_old
    layer_map = [i // ratio for i in range(n_new)]
    for i, j in enumerate(layer_map):
        new_layers[i].load_state_dict(old_layers[j].state_dict())
        new_layers[i].self_attn.o_proj.weight.mul_(1.0 / ratio)
        new_layers[i].mlp.down_proj.weight.mul_(1.0 / ratio)
        for lin in (new_layers[i].self_attn.o_proj, new_layers[i].mlp.down_proj):
            if lin.bias is not None:
                lin.bias.mul_(1.0 / ratio)
    return {"layer_map": layer_map, "scale": 1.0 / ratio}
