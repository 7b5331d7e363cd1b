"""vlprune's SparseVLM stage against the official code (sparsevlm_official.py) on the same tensors: text raters from
the LLM input, the rating by the pruning layer's attention (one Llama layer, its own q/k and RoPE), the kept visual
tokens, and the recycled tokens (1e-5) in the official output sequence (kept visual tokens, recycled ones, text)."""
import pytest
import torch

from vlprune.llm_stage import PromptView, StageInputs
from vlprune.methods import sparsevlm

from . import sparsevlm_official as official
from .sources import TieWatch, patched_prefill_and_generate, run_tie_free
from .test_oracle_visiondrop import _rope, llama  # noqa: F401  (the module-scoped Llama layer fixture)

PRE, POST = 5, 9  # text tokens before / after the image span
# (visual tokens, official budget RETAIN_TOKN, official pruning layer): budgets 66/30/17, 303/110/36, 300/200/110
CASES = [(36, 64, 6), (36, 64, 15), (144, 64, 2), (144, 128, 6), (144, 192, 15), (576, 64, 2), (576, 128, 2),
         (576, 192, 2), (576, 192, 6)]


class _Watch(TieWatch):
    """The official ``dist_matrix.flatten(1).max(dim=-1)[0]`` reads the largest VALUE of a symmetric matrix (always
    tied, harmless): ``max`` is left out; every ordering whose indices are used is still watched."""

    _ORDERING = TieWatch._ORDERING - {torch.max, torch.Tensor.max}


def _fixed_rand(real=torch.rand):
    """cluster_and_merge's ``torch.rand(density.shape) * 1e-6`` tie-break draw, made vlprune's fixed draw."""
    def rand(*size, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, torch.Size)) else size
        if len(shape) != 2:
            return real(*size, **kwargs)
        return sparsevlm.tie_break_noise(*shape) * 1e6
    return rand


@pytest.mark.parametrize("n,retain,layer_idx", CASES)
def test_stage_equals_official(llama, n, retain, layer_idx, monkeypatch):  # noqa: F811
    """The official draws U(0, 1) for its density tie-break; here it draws vlprune's fixed values (mutual nearest
    neighbours tie exactly, so any draw decides clusters: tests/oracles/README.md)."""
    monkeypatch.setattr(torch, "rand", _fixed_rand())
    layer, rotary, apply = llama
    length = PRE + n + POST
    budget = official.sparse_token_dict[retain][official.layer_dict[layer_idx]]
    budget = min(budget, n - 1)

    def draw(seed):  # LLM input (raters), pruning-layer input and output; the official attention probabilities
        g = torch.Generator().manual_seed(100 * n + retain + layer_idx + seed)
        return draw_stage(layer, rotary, length, g)

    def run_official(embeds, hidden, out, cos, sin, probs):
        official.RETAIN_TOKN = retain
        raters = official.select_text_raters(embeds, [PRE], PRE, PRE + n)
        return official.pruning_layer(probs, (out, None), hidden, PRE, n, PRE + n, raters, layer_idx, [PRE], n, 1)

    with torch.no_grad():
        (embeds, hidden, out, cos, sin, _), (want_seq, want_mask, want_rec, clusters) = run_tie_free(draw, run_official, watch_cls=_Watch)
        cfg = sparsevlm.SparseVLMConfig()
        stage = sparsevlm._stage(layer=1, count=budget, cfg=cfg)
        is_img = torch.zeros(1, length, dtype=torch.bool)
        is_img[:, PRE:PRE + n] = True
        keep = budget + stage.extra(n, budget)
        common = dict(layer=layer, cos=cos, sin=sin, mask=None, image_pos=torch.arange(PRE, PRE + n).unsqueeze(0),
                      rope=_rope(apply), budget=budget, keep=keep,
                      prompt=PromptView(embeds, is_img, torch.zeros_like(is_img)),
                      columns=torch.arange(length).unsqueeze(0))
        scores = stage.score(StageInputs(hidden=hidden, **common))
        inputs = StageInputs(hidden=out, scores=scores, **common)
        ranking, inputs.aux = stage.select(inputs)
        order = torch.sort(ranking, dim=-1, descending=True, stable=True).indices
        kept, dropped = torch.sort(order[:, :keep]).values, torch.sort(order[:, keep:]).values
        merged = stage.merge(inputs, kept, dropped)[0]  # (keep, D) in slot order
    centres = inputs.aux["centres"][0]
    assert clusters == len(centres) == keep - budget
    is_centre = torch.isin(kept[0], centres)
    assert kept[0][~is_centre].tolist() == torch.nonzero(want_mask[0]).flatten().tolist()
    torch.testing.assert_close(inputs.aux["tokens"][0], want_rec[0], rtol=0, atol=1e-5)
    # the official sequence: prefix, kept visual tokens (slot order), recycled tokens (cluster order), text
    rank = {int(s): i for i, s in enumerate(centres)}
    recycled = merged[is_centre][torch.tensor([rank[int(s)] for s in kept[0][is_centre]]).argsort()]
    got = torch.cat([out[0, :PRE], merged[~is_centre], recycled, out[0, PRE + n:]])
    torch.testing.assert_close(got, want_seq[0], rtol=0, atol=1e-5)


def test_recycle_with_the_official_noise_equals_official():
    """With the official U(0, 1e-6) density noise passed in, cluster_merge equals cluster_and_merge exactly."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 60, 16, generator=g)
    torch.manual_seed(7)
    want = official.cluster_and_merge(x, 7)
    torch.manual_seed(7)
    noise = torch.rand(1, 60) * 1e-6
    _, got = sparsevlm.cluster_merge(x, 7, noise=noise)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def draw_stage(layer, rotary, length, g):
    """Random LLM input (raters), pruning-layer input and output (1, length, 64), the rotary tables and the layer's
    attention probabilities (the official ``attn_logits``)."""
    embeds, hidden, out = (torch.randn(1, length, 64, generator=g) for _ in range(3))
    cos, sin = rotary(hidden, torch.arange(length).unsqueeze(0))
    return embeds, hidden, out, cos, sin, layer_probs(layer, hidden, cos, sin)


def layer_probs(layer, hidden, cos, sin):
    """A Llama decoder layer's attention probabilities (1, H, L, L) on ``hidden`` (causal, eager), as the official
    code's ``attn_logits``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    attn, length = layer.self_attn, hidden.shape[1]
    normed = layer.input_layernorm(hidden)
    q = attn.q_proj(normed).view(1, length, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(normed).view(1, length, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    causal = torch.full((length, length), float("-inf")).triu(1)
    return torch.softmax(q @ k.transpose(2, 3) / attn.head_dim**0.5 + causal, dim=-1)


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=8)


def _official_forward(model, embeds, image_index, n, score_layers):
    """The LLM as the official code runs it (one sample): text raters on the LLM input; at each pruning layer its
    attention probabilities and output go through ``pruning_layer``; the shorter sequence is renumbered 0..L'-1."""
    lm = model.model.language_model
    hidden = embeds
    raters = official.select_text_raters(embeds, [image_index], image_index, image_index + n)
    v_num = n
    for i, layer in enumerate(lm.layers):
        pos = torch.arange(hidden.shape[1]).unsqueeze(0)
        cos, sin = lm.rotary_emb(hidden, pos)
        out = layer(hidden, position_embeddings=(cos, sin), position_ids=pos)
        out = out[0] if isinstance(out, tuple) else out
        if i in score_layers:
            probs = layer_probs(layer, hidden, cos, sin)
            out, mask, _, clusters = official.pruning_layer(probs, (out, None), hidden, image_index, v_num,
                                                            image_index + v_num, raters, i, [image_index], n, 1)
            v_num = int(mask.sum()) + clusters
        hidden = out
    return model.lm_head(lm.norm(hidden))[:, -1]


@pytest.mark.parametrize("keep", [3, 5, 8])
def test_official_positions_equal_the_official_forward(tiny8, keep, monkeypatch):
    """positions='official': prefill logits equal the official LLM forward (every stage from the official code, the
    sequence renumbered after each); cached greedy decoding equals a no-cache loop of that forward."""
    model = tiny8.model
    inputs = tiny8.prompt_ids(["what color is the circle ?"])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(keep))
    layers, counts = sparsevlm.schedule(keep, 8, sparsevlm.SparseVLMConfig(), 16)
    score_layers = [layer - 1 for layer in layers]
    monkeypatch.setattr(official, "layer_dict", {s: i for i, s in enumerate(score_layers)})
    monkeypatch.setattr(official, "sparse_token_dict", {keep: counts})
    monkeypatch.setattr(official, "RETAIN_TOKN", keep)
    monkeypatch.setattr(torch, "rand", _fixed_rand())
    embeds, got, out = patched_prefill_and_generate(model, "sparsevlm", keep, inputs, pixels, positions="official")
    image_index = int((inputs["input_ids"][0] == 4).nonzero()[0])
    with torch.no_grad():
        torch.testing.assert_close(got, _official_forward(model, embeds, image_index, 16, score_layers),
                                   rtol=0, atol=1e-4)
        emb = model.get_input_embeddings()
        for step in range(4):  # greedy, no cache: the prompt's embeddings plus the generated tokens'
            nxt = _official_forward(model, embeds, image_index, 16, score_layers).argmax(-1)
            assert int(nxt) == int(out[0, inputs["input_ids"].shape[1] + step])
            embeds = torch.cat([embeds, emb(nxt).unsqueeze(1)], 1)
