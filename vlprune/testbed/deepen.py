"""Deepening init: start a deeper testbed LLM from a trained shallower one (``vlprune testbed build --llm-init``).

With ``ratio = new / old`` layers per source layer, two ways (``mode``):

- ``"identity"`` (exact): source layer ``j`` sits at ``j * ratio``, followed by ``ratio - 1`` layers whose
  residual outputs (``o_proj``, ``down_proj``) are zero, so they pass the residual stream through unchanged:
  the deep model computes exactly the source's function at step 0 (Net2Net's identity layers).
- ``"split"``: every layer is a copy of its source layer with the residual outputs scaled by ``1 / ratio``, so the
  copies add the source layer's update in ``ratio`` smaller steps (a forward-Euler split of ``x + f(x)``); not
  exact (RMSNorm and attention are far from linear over such steps: on the bundled testbed the loss started
  near 2.4 against the source's 0.065).

What this implies for in-LLM pruning: at step 0 the deep model reads the image where its source did, so a
method pruning at layer ``K`` of the deep model cuts where the source's layer ``K // ratio`` sits (identity: a
FastV at layer 2 of 6 prunes after source layer 0, as FastV at layer 1 of the 2-layer testbed). Fine-tuning may
move that; the init does not, and a short fine-tune leaves the deep model close to its source.
"""

from __future__ import annotations

import torch

__all__ = ["deepen_from"]


@torch.no_grad()
def deepen_from(model, source, mode: str = "identity") -> dict:
    """Copy ``source`` (a trained LLaVA of the same widths) into ``model`` (a LLaVA with a deeper LLM).

    Projector, embeddings, final norm and LM head are copied as they are; decoder layer ``i`` of ``model`` is
    source layer ``layer_map[i]`` with ``o_proj`` and ``down_proj`` scaled by ``scales[i]`` (identity: 1 for
    the source layers, 0 for the inserted ones; split: ``L_src / L_new`` for all). The vision tower is left
    alone (the caller loads it). Returns ``{"mode", "layer_map", "scales"}``.
    """
    if mode not in ("identity", "split"):
        raise ValueError(f"deepening mode must be 'identity' or 'split', got {mode!r}")
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
    scales = [1.0 / ratio] * n_new if mode == "split" else [1.0 if i % ratio == 0 else 0.0 for i in range(n_new)]
    for i, (j, scale) in enumerate(zip(layer_map, scales)):
        new_layers[i].load_state_dict(old_layers[j].state_dict())
        for lin in (new_layers[i].self_attn.o_proj, new_layers[i].mlp.down_proj):
            lin.weight.mul_(scale)
            if lin.bias is not None:
                lin.bias.mul_(scale)
    return {"mode": mode, "layer_map": layer_map, "scales": scales}
