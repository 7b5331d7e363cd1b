"""vlprune's ``sparsevlm`` with ``version="v1"`` against the authors' v1 code (sparsevlm_v1_official.py, b72c5d6) on
the same tensors: the rank rule on planted attention matrices (rank-deficient, rank = n, a singular value between
two tolerances), one pruning layer (raters, rank count, kept set, recycled tokens, output sequence 1e-5), and the
whole 8-layer LLM of a tiny LLaVA with ``positions="official"`` (prefill logits 1e-4, first greedy token)."""
import pytest
import torch

from vlprune.llm_stage import PromptView, StageInputs
from vlprune.methods import sparsevlm

from . import sparsevlm_v1_official as official
from .sources import patched_prefill_and_generate, run_tie_free
from .test_oracle_sparsevlm import _fixed_rand, _Watch, draw_stage, layer_probs
from .test_oracle_visiondrop import _rope, llama  # noqa: F401  (the module-scoped Llama layer fixture)

PRE, POST = 5, 9
PRESETS = sparsevlm.V1_PRESETS


def _official_count(attn, raters, n, scale, bias):
    """The official rank rule on one row: attention (T, n) with its raters (T,) bool, as (1, 1, L, L) weights."""
    t = attn.shape[0]
    w = torch.zeros(1, 1, PRE + n + t, PRE + n + t)
    w[0, 0, PRE + n:, PRE:PRE + n] = attn
    idx = torch.where(raters.unsqueeze(0))
    mask, s_flag, _ = official.attn_postprocess_rank(w, PRE, n, PRE + n, idx, scale, bias)
    return int(mask.sum()), bool(s_flag)


def _planted(rows, n, singular, g):
    """(rows, n) = U diag(singular) V^T with random orthonormal U, V (float64 -> float32)."""
    u = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))[0][:, : len(singular)]
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0][:, : len(singular)]
    return (u * torch.tensor(singular, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_rank_rule_equals_official(preset):
    """Rows with different rater counts in one batch: random (rank = raters), duplicated rater rows (rank - 1), more
    raters than visual tokens (rank = n: keep all), and a smallest singular value 3 x max(R, n) eps s_max, kept by
    the official tolerance of its own (R, n) matrix but not by that of a zero-padded (T, n) one."""
    scale, bias, _ = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    n, t = 8, 40
    eps = torch.finfo(torch.float32).eps
    attn = torch.rand(4, t, n, generator=g)
    raters = torch.zeros(4, t, dtype=torch.bool)
    raters[0, [1, 4, 7]] = True  # random: rank 3
    raters[1, [0, 2, 3, 9]] = True
    attn[1, 3] = attn[1, 2]  # duplicated rater row: rank 3
    raters[2, :12] = True  # 12 raters > 8 visual tokens: rank 8 = n
    raters[3, [5, 6, 8, 20]] = True  # planted: rank 4 at tolerance max(4, 8) eps, 3 at max(40, 8) eps
    attn[3, [5, 6, 8, 20]] = _planted(4, n, [1.0, 0.5, 0.3, 3 * n * eps], g).float()
    ranks, counts = sparsevlm.rank_counts(attn, raters, 1, scale, bias)
    assert ranks == [3, 3, 8, 4]
    for b in range(4):
        want, s_flag = _official_count(attn[b], raters[b], n, scale, bias)
        assert counts[b] == want and s_flag == (ranks[b] != n)


CASES = [(4, "mme"), (36, "mme"), (36, "textvqa"), (144, "pope"), (144, "textvqa"), (576, "mme"), (576, "pope"),
         (576, "textvqa")]


@pytest.mark.parametrize("n,preset", CASES)
def test_stage_equals_official(llama, n, preset, monkeypatch):  # noqa: F811
    """One pruning layer: the official v1 layer (its rank count, kept set, recycled tokens, new sequence) on the same
    LLM input, layer input/output and attention probabilities as vlprune's v1 stage."""
    monkeypatch.setattr(torch, "rand", _fixed_rand())
    scale, bias, _ = PRESETS[preset]
    layer, rotary, apply = llama
    length = PRE + n + POST

    def draw(seed):
        g = torch.Generator().manual_seed(7 * n + len(preset) + seed)
        return draw_stage(layer, rotary, length, g)

    def run_official(embeds, hidden, out, cos, sin, probs):
        raters = official.select_text_raters(embeds, PRE, PRE + n)
        return official.pruning_layer(probs, (out, None), hidden, PRE, n, PRE + n, raters, scale, bias, [PRE], n, 1,
                                      torch.arange(length).unsqueeze(0))

    with torch.no_grad():
        (embeds, hidden, out, cos, sin, _), want = run_tie_free(draw, run_official, watch_cls=_Watch)
        want_seq, want_mask, s_flag, want_n, _, want_rec, clusters = want
        cfg = sparsevlm.SparseVLMConfig(version="v1", preset=preset)
        stage = sparsevlm._stage(layer=1, count=1, cfg=cfg)
        is_img = torch.zeros(1, length, dtype=torch.bool)
        is_img[:, PRE:PRE + n] = True
        common = dict(layer=layer, cos=cos, sin=sin, mask=None, image_pos=torch.arange(PRE, PRE + n).unsqueeze(0),
                      rope=_rope(apply), budget=n, keep=n, prompt=PromptView(embeds, is_img, torch.zeros_like(is_img)),
                      columns=torch.arange(length).unsqueeze(0))
        scores, aux = stage.score(StageInputs(hidden=hidden, **common))
        inputs = StageInputs(hidden=out, scores=scores, aux=aux, **common)
        ranking, inputs.aux = stage.select(inputs)
        alive = torch.isfinite(ranking[0])
        kept = torch.nonzero(alive).flatten().unsqueeze(0)
        merged = stage.merge(inputs, kept, torch.nonzero(~alive).flatten().unsqueeze(0))[0]
    assert aux["counts"][0] == int(want_mask.sum())  # the rank count
    assert int(want_n) == kept.shape[1] and s_flag == (kept.shape[1] < n or clusters > 0)
    centres = inputs.aux["centres"][0]
    assert len(centres) == clusters
    is_centre = torch.isin(kept[0], centres)
    assert kept[0][~is_centre].tolist() == torch.nonzero(want_mask[0]).flatten().tolist()
    if clusters:
        torch.testing.assert_close(inputs.aux["tokens"][0], want_rec[0], rtol=0, atol=1e-5)
    rank = {int(s): i for i, s in enumerate(centres)}
    recycled = merged[is_centre][torch.tensor([rank[int(s)] for s in kept[0][is_centre]], dtype=torch.long).argsort()]
    got = torch.cat([out[0, :PRE], merged[~is_centre], recycled, out[0, PRE + n:]])
    torch.testing.assert_close(got, want_seq[0], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=8)


def _official_forward(model, embeds, image_index, n, score_layers, scale, bias):
    """The LLM as the official v1 code runs it (one sample): raters on the LLM input; at each pruning layer its
    attention probabilities and output go through ``pruning_layer``, which shortens ``position_ids`` (0..L'-1)."""
    lm = model.model.language_model
    hidden = embeds
    raters = official.select_text_raters(embeds, image_index, image_index + n)
    v_num, pos = n, torch.arange(embeds.shape[1]).unsqueeze(0)
    for i, layer in enumerate(lm.layers):
        cos, sin = lm.rotary_emb(hidden, pos)
        out = layer(hidden, position_embeddings=(cos, sin), position_ids=pos)
        out = out[0] if isinstance(out, tuple) else out
        if i in score_layers:
            probs = layer_probs(layer, hidden, cos, sin)
            out, _, _, v_num, pos, _, _ = official.pruning_layer(
                probs, (out, None), hidden, image_index, int(v_num), image_index + int(v_num), raters, scale, bias,
                [image_index], n, 1, pos)
        hidden = out
    return model.lm_head(lm.norm(hidden))[:, -1]


@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (0.5, 2.0), (3.0, 0.0)])
def test_official_positions_equal_the_official_forward(tiny8, scale, bias, monkeypatch):
    """positions='official': prefill logits equal the official v1 LLM forward (four stages, after layers 0, 1, 3, 4
    of 8, each from the official code), and so does the first generated token. (Later tokens: no no-cache loop of
    the official forward is a reference, since each longer prompt has more text raters, so another rank and count;
    the official decodes from the prefill's cache, as vlprune: tests/test_sparsevlm_v1.py checks cached == no-cache
    with the prompt's decisions.)"""
    model = tiny8.model
    inputs = tiny8.prompt_ids(["what color is the circle ?"])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(int(10 * scale + bias)))
    cfg = sparsevlm.SparseVLMConfig(version="v1", scale=scale, bias=bias)
    score_layers = [layer - 1 for layer in sparsevlm.stage_layers(8, cfg)]
    assert score_layers == [0, 1, 3, 4]
    monkeypatch.setattr(torch, "rand", _fixed_rand())
    embeds, got, out = patched_prefill_and_generate(model, "sparsevlm", 8, inputs, pixels, positions="official",
                                                    version="v1", scale=scale, bias=bias)
    image_index = int((inputs["input_ids"][0] == 4).nonzero()[0])
    with torch.no_grad():
        want = _official_forward(model, embeds, image_index, 16, score_layers, scale, bias)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert int(want.argmax(-1)) == int(out[0, inputs["input_ids"].shape[1]])
