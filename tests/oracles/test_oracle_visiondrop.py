"""vlprune's VisionDrop against the official stages on the same tensors: the encoder stage is VisionZip's code
with VisionDrop's counts (visionzip_official.py), an LLM stage is visiondrop_official.py on one Llama layer."""
import math

import pytest
import torch

from vlprune.llm_stage import StageInputs
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


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=8)


def _official_forward(model, embeds, stages):
    """The LLM as the official code runs it: at each stage layer, visiondrop_stage on that layer's input
    (q/k at the current positions 0..L-1), then the shorter sequence renumbered 0..L'-1, causal."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    lm = model.model.language_model
    hidden, start = embeds, stages["image_index"]
    n_img = stages["first"]
    for i, layer in enumerate(lm.layers):
        pos = torch.arange(hidden.shape[1]).unsqueeze(0)
        cos, sin = lm.rotary_emb(hidden, pos)
        if i in stages["at"]:
            dominant, contextual = stages["at"][i]
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            shape = (1, hidden.shape[1], -1, attn.head_dim)
            q = attn.q_proj(normed).view(shape).transpose(1, 2)
            k = attn.k_proj(normed).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = repeat_kv(k, attn.num_key_value_groups)  # the official code has as many kv heads as q heads
            causal = torch.full((hidden.shape[1],) * 2, torch.finfo(q.dtype).min).triu(1).unsqueeze(0)
            _, new, *_ = visiondrop_stage(q[0], k[0], causal, [hidden[0]], [n_img], [dominant], [contextual],
                                          start, attn.head_dim, q)
            hidden, n_img = new.unsqueeze(0), dominant + contextual
            pos = torch.arange(hidden.shape[1]).unsqueeze(0)
            cos, sin = lm.rotary_emb(hidden, pos)
        hidden = layer(hidden, position_embeddings=(cos, sin), position_ids=pos)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return model.lm_head(lm.norm(hidden))[:, -1]


@pytest.mark.parametrize("keep", [7, 8, 10])  # every stage merges (the official code needs contextual >= 1)
def test_official_positions_equal_the_official_forward(tiny8, keep):
    """positions='official': prefill logits equal the official LLM forward (every stage from the official code,
    sequence renumbered after each); cached greedy decoding equals a no-cache loop of that forward."""
    import vlprune

    model = tiny8.model
    inputs = tiny8.prompt_ids(["what color is the circle ?"])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(keep))
    cfg = visiondrop.VisionDropConfig(positions="official")
    layers, counts, contextual = visiondrop.schedule(keep, 8, cfg, 16)
    captured = {}

    def capture(module, args, kwargs):  # the LLM input of the prompt (the first call), same in both conventions
        captured.setdefault("embeds", (args[0] if args else kwargs["hidden_states"]).clone())

    hook = model.model.language_model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    vlprune.apply(model, "visiondrop", keep, positions="official")
    try:
        with torch.no_grad():
            got = model(**inputs, pixel_values=pixels).logits[:, -1]
            out = model.generate(**inputs, pixel_values=pixels, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    finally:
        vlprune.remove(model)
        hook.remove()
    image_index = int((inputs["input_ids"][0] == 4).nonzero()[0])
    stages = {"image_index": image_index, "first": counts[0],
              "at": {l: (c - x, x) for l, c, x in zip(layers, counts[1:], contextual[1:])}}
    with torch.no_grad():
        want = _official_forward(model, captured["embeds"][:1], stages)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        embeds = captured["embeds"][:1]
        emb = model.get_input_embeddings()
        for step in range(4):  # greedy, no cache: the prompt's embeddings plus the generated tokens'
            nxt = _official_forward(model, embeds, stages).argmax(-1)
            assert int(nxt) == int(out[0, inputs["input_ids"].shape[1] + step])
            embeds = torch.cat([embeds, emb(nxt).unsqueeze(1)], 1)
