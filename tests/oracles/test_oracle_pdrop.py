"""vlprune's PyramidDrop against the official rank & drop (pdrop_official.py) on the same tensors: one stage on one
Llama layer (N = 36/144/576), and a whole 32-layer LLM with the official schedule (layers 8/16/24, ratios
0.5/0.25/0.125 = keep 270 on 576 tokens) where the official loop renumbers positions after every stage."""
from types import SimpleNamespace

import pytest
import torch

from vlprune import compat
from vlprune.llm_pruning import LLMPruner, StageInputs
from vlprune.methods import pdrop
from vlprune.ops import descending_order

from .pdrop_official import pdrop_stage
from .sources import run_tie_free

PRE, POST = 35, 9  # text tokens before / after the image (LLaVA-1.5's system prompt is 35 tokens)


def _llama(layers: int, width: int = 32):
    from transformers.models.llama import modeling_llama as ml

    torch.manual_seed(0)
    # query heads = key/value heads, as LLaVA-1.5's Vicuna (the official score multiplies them unrepeated)
    cfg = ml.LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_key_value_heads=2,
                         num_hidden_layers=layers, max_position_embeddings=2048, vocab_size=8)
    return ml.LlamaModel(cfg).eval(), ml.apply_rotary_pos_emb


def _qk(layer, hidden, cos, sin, apply):
    """Post-RoPE q/k of ``layer`` on its input, as the official code derives them (input_layernorm, q/k_proj)."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (hidden.shape[0], hidden.shape[1], -1, attn.head_dim)
    q = attn.q_proj(normed).view(shape).transpose(1, 2)
    k = attn.k_proj(normed).view(shape).transpose(1, 2)
    return apply(q, k, cos, sin)


def _causal(length: int) -> torch.Tensor:
    return torch.full((length, length), torch.finfo(torch.float32).min).triu(1).view(1, 1, length, length)


@pytest.fixture(scope="module")
def llama2():
    return _llama(2, width=64)


@pytest.mark.parametrize("n,keep", [(36, 18), (36, 5), (144, 72), (144, 9), (576, 288), (576, 72)])
def test_stage_equals_official(llama2, n, keep):
    model, apply = llama2
    layer = model.layers[1]
    length = PRE + n + POST

    def draw(seed):
        hidden = torch.randn(1, length, 64, generator=torch.Generator().manual_seed(10 * n + keep + seed))
        cos, sin = model.rotary_emb(hidden, torch.arange(length).unsqueeze(0))
        q, k = _qk(layer, hidden, cos, sin, apply)
        return hidden, cos, sin, q, k

    def official(hidden, cos, sin, q, k):
        me = SimpleNamespace(prompt_len=[PRE + POST])  # text tokens: the last instruction token is the last one
        return pdrop_stage(me, k, q, _causal(length), [hidden[0]], [n], [keep], PRE, layer.self_attn.head_dim)

    with torch.no_grad():
        (hidden, cos, sin, *_), (want, want_seq) = run_tie_free(draw, official)
        inputs = StageInputs(layer=layer, hidden=hidden, cos=cos, sin=sin, mask=None,
                             image_pos=torch.arange(PRE, PRE + n).unsqueeze(0),
                             rope=lambda x, c, s: apply(x, x, c, s)[0], keep=keep)
        kept = torch.sort(descending_order(pdrop.instruction_scores(inputs))[:, :keep]).values[0] + PRE
    assert kept.tolist() == want.tolist()
    torch.testing.assert_close(torch.cat([hidden[0, :PRE], hidden[0, kept], hidden[0, PRE + n:]]), want_seq)


def _official_forward(model, embeds, apply, n, layer_list, ratio_list):
    """The official ``pdrop_forward`` (inference, one sample, no padding): after layer ``rank_layer - 1`` rank with
    ``layers[rank_layer]``'s q/k at the current positions, drop, renumber 0..L'-1. Returns the last hidden state
    and the kept prompt positions after every stage."""
    hidden, cols, kept = embeds, torch.arange(embeds.shape[1]), []
    for idx, layer in enumerate(model.layers):
        pos = torch.arange(hidden.shape[1]).unsqueeze(0)
        hidden = layer(hidden, position_embeddings=model.rotary_emb(hidden, pos), position_ids=pos)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        rank_layer = idx + 1
        if rank_layer in layer_list:
            stage = layer_list.index(rank_layer)
            image_tokens = [int(n * ratio_list[stage])]
            keep_length = [int(n * ratio_list[stage + 1])]
            cos, sin = model.rotary_emb(hidden, pos)
            q, k = _qk(model.layers[rank_layer], hidden, cos, sin, apply)
            me = SimpleNamespace(prompt_len=[PRE + POST])
            top, new = pdrop_stage(me, k, q, _causal(hidden.shape[1]), [hidden[0]], image_tokens, keep_length, PRE,
                                   model.layers[rank_layer].self_attn.head_dim)
            keep_cols = torch.cat([torch.arange(PRE), top, torch.arange(PRE + image_tokens[0], hidden.shape[1])])
            cols = cols[keep_cols]
            kept.append(cols[PRE: PRE + keep_length[0]])
            hidden = new.unsqueeze(0)
    return model.norm(hidden), kept


def run_pruned(model, stages, embeds, start, n):
    """vlprune's stages on a bare LlamaModel (visual tokens at ``start .. start + n``): the last hidden states and
    the prompt positions kept at every stage."""
    pruner = LLMPruner(model.layers, stages, compat.rope_function(model.layers[0].self_attn))
    try:
        image = torch.zeros(1, embeds.shape[1], dtype=torch.bool)
        image[:, start: start + n] = True
        pruner.begin_prefill(image, [1])
        got = model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    finally:
        pruner.remove()
    return got, [h[0].tolist() for h in pruner.history]


def draw_embeds(length: int):
    return lambda seed: (torch.randn(1, length, 32, generator=torch.Generator().manual_seed(seed)),)


def test_official_schedule_forward_equals_official_loop():
    """keep=270 on 576 tokens and 32 layers is the official default (8/16/24, lambda 0.5): with positions='official'
    the kept patches of every stage and the last hidden states equal the official loop's."""
    model, apply = _llama(32)
    n = 576
    length = PRE + n + POST
    cfg = pdrop.PDropConfig(positions="official")
    layers, counts, lam = pdrop.schedule(270, n, 32, cfg)
    assert (layers, counts) == ([8, 16, 24], [288, 144, 72]) and abs(lam - 0.5) < 1e-12

    with torch.no_grad():
        (embeds,), (want, want_kept) = run_tie_free(
            draw_embeds(length), lambda e: _official_forward(model, e, apply, n, [8, 16, 24], [1.0, 0.5, 0.25, 0.125]))
        got, kept = run_pruned(model, pdrop.plan(270, 32, cfg, n), embeds, PRE, n)
    assert kept == [k.tolist() for k in want_kept]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
