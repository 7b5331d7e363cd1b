"""vlprune's VisionDrop against the official stages on the same tensors: the encoder stage is VisionZip's code
with VisionDrop's counts (visionzip_official.py), an LLM stage is visiondrop_official.py on one Llama layer."""
import math

import pytest
import torch

from vlprune.llm_pruning import StageInputs
from vlprune.methods import visiondrop

from .sources import TensorSource, run_tie_free
from .test_oracle_visionzip import draw_layer
from .visiondrop_official import visiondrop_stage
from .visionzip_official import visionzip_forward

PRE, POST = 5, 7  # text tokens before / after the image span
LLM_CASES = [(36, 8, 2), (36, 16, 3), (36, 24, 4), (144, 30, 5), (144, 48, 8), (144, 96, 12), (576, 42, 6),
             (576, 96, 12), (576, 192, 24)]


@pytest.mark.parametrize("n,keep", [(36, 8), (144, 32), (576, 32), (576, 64)])
def test_encoder_stage_equals_official(n, keep):
    """keep=32 on LLaVA-1.5: 48 tokens = official --dominant 42 (incl. [CLS]) --contextual 6."""
    cfg = visiondrop.VisionDropConfig()
    count = visiondrop.encoder_tokens(keep, cfg, n)
    n_ctx = min(int(count * cfg.contextual_ratios[0] + 0.5), count - 1)
    (attn, hidden, metric, *_), (want, _) = run_tie_free(
        lambda seed: (*draw_layer(n, 7 * n + keep + seed), count - n_ctx - 1, n_ctx), visionzip_forward)
    src = TensorSource(hidden[:, 1:], attn[:, :, 0, 1:].mean(dim=1), keys=metric[:, 1:], cls_feature=hidden[:, 0])
    torch.testing.assert_close(visiondrop.select(src, keep, cfg).features, want, rtol=0, atol=1e-5)
    if keep == 32 and n == 576:
        assert (count - n_ctx, n_ctx) == (42, 6)


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama as ml

    torch.manual_seed(0)
    # query heads = key/value heads, as LLaVA-1.5's Vicuna (the official score multiplies them unrepeated)
    cfg = ml.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                         num_hidden_layers=2, max_position_embeddings=1024)
    assert isinstance(cfg, LlamaConfig)
    layer = ml.LlamaDecoderLayer(cfg, layer_idx=1).eval()
    return layer, ml.LlamaRotaryEmbedding(cfg), ml.apply_rotary_pos_emb


def _rope(apply):
    return lambda x, cos, sin: apply(x, x, cos, sin)[0]


@pytest.mark.parametrize("n,dominant,contextual", LLM_CASES)
def test_llm_stage_equals_official(llama, n, dominant, contextual):
    layer, rotary, apply = llama
    attn = layer.self_attn
    length = PRE + n + POST
    head_dim = attn.head_dim

    def draw(seed):  # the layer input, and what the official code derives from it with the layer's own modules
        hidden = torch.randn(1, length, 64, generator=torch.Generator().manual_seed(1000 * n + dominant + seed))
        cos, sin = rotary(hidden, torch.arange(length).unsqueeze(0))
        normed = layer.input_layernorm(hidden)
        q = attn.q_proj(normed).view(1, length, -1, head_dim).transpose(1, 2)
        k = attn.k_proj(normed).view(1, length, -1, head_dim).transpose(1, 2)
        q, k = apply(q, k, cos, sin)
        causal = torch.full((length, length), torch.finfo(q.dtype).min).triu(1).view(1, length, length)
        return hidden, cos, sin, q, k, causal

    def official(hidden, cos, sin, q, k, causal):
        return visiondrop_stage(q[0], k[0], causal, [hidden[0]], [n], [dominant], [contextual], PRE, head_dim, q)

    with torch.no_grad():
        (hidden, cos, sin, *_), (want_tokens, _, _, dominant_slots, target_places) = run_tie_free(draw, official)
        stage = visiondrop._llm_stage(layer=1, count=dominant + contextual, n_contextual=contextual)
        inputs = StageInputs(layer=layer, hidden=hidden, cos=cos, sin=sin, mask=None,
                             image_pos=torch.arange(PRE, PRE + n).unsqueeze(0), rope=_rope(apply),
                             keep=dominant + contextual)
        ranking, aux = stage.score(inputs)
        order = torch.sort(ranking, dim=-1, descending=True, stable=True).indices
        kept, dropped = torch.sort(order[:, : dominant + contextual]).values, order[:, dominant + contextual:]
        rest = [s for s in range(n) if s not in set(dominant_slots.tolist())]
        assert kept[0].tolist() == sorted(dominant_slots.tolist() + [rest[p] for p in target_places.tolist()])
        inputs.aux = aux
        merged = stage.merge(inputs, kept, dropped)[0]  # (k, D): contextual tokens in their targets' slots
    is_target = torch.isin(kept[0], aux["targets"][0])
    # official order: dominant tokens (slot order), then contextual tokens (target order = slot order)
    torch.testing.assert_close(torch.cat([merged[~is_target], merged[is_target]]), want_tokens, rtol=0, atol=1e-5)
