"""PyramidDrop and V2Drop: schedules (budget -> per-stage counts, depth scaling), the pure functions, and the
correctness matrix of the in-LLM methods on tiny LLaVA-1.5 (8 layers), LLaVA-NeXT and Qwen2.5-VL models: full budget
= unpatched model, cached generate = no-cache loop, batch = each sample alone (ragged batches included), the LLM sees
the scheduled counts, remove() is exact. The official code's selections: tests/oracles/test_oracle_{pdrop,v2drop}.py.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, assert_cached_generate_equals_no_cache, logits
from test_llm_methods import LAYERS, N, _clean, _tokens_per_layer, tiny8  # noqa: F401 (fixtures)
from test_ragged_batches import _generate, assert_qwen_samples_equal_batch, _rows, _scheduled, _visible_visual, assert_generate_equals_no_cache_loop
from vlprune.api import _state
from vlprune.flops import tokens_per_layer
from vlprune.methods import layer_schedule as ls
from vlprune.methods.pdrop import PDropConfig, schedule as pdrop_schedule
from vlprune.methods.v2drop import V2DropConfig, official_counts, schedule as v2drop_schedule, variation
from vlprune.presets import get_preset

CASES = {"pdrop": ("pdrop", {}), "pdrop-official": ("pdrop", {"positions": "official"}), "v2drop": ("v2drop", {}),
         "v2drop-cosine": ("v2drop", {"metric": "cosine"})}


# -- schedules --------------------------------------------------------------------------------------------------
def test_pdrop_official_default_and_desap_budgets():
    cfg = PDropConfig()
    layers, counts, lam = pdrop_schedule(270, 576, 32, cfg)  # --layer_list [8,16,24] --ratio [0.5,0.25,0.125]
    assert (layers, counts) == ([8, 16, 24], [288, 144, 72]) and abs(lam - 0.5) < 1e-9
    want = {192: [8, 16, 24], 128: [2, 8, 16], 64: [2, 8, 16]}  # below 144 the authors' low-budget stages
    for keep, stage_layers in want.items():
        layers, counts, lam = pdrop_schedule(keep, 576, 32, cfg)
        assert layers == stage_layers and ls.layer_average(layers, counts, 576, 32) == keep
        assert counts == sorted(counts, reverse=True) and all(abs(c - 576 * lam ** (i + 1)) < 7
                                                               for i, c in enumerate(counts))
    assert abs(pdrop_schedule(64, 576, 32, cfg)[2] - 0.19) < 0.005  # issue #29: lambda = 0.19 at 2/8/16
    for keep in range(40, 577, 11):  # the budget is the layer average (8-layer segments: always exact)
        layers, counts, _ = pdrop_schedule(keep, 576, 32, cfg)
        assert layers != [8, 16, 24] or ls.layer_average(layers, counts, 576, 32) == keep
    assert pdrop_schedule(576, 576, 32, cfg)[1] == [576] * 3  # full budget: nothing pruned


def test_v2drop_paper_budgets_and_generic_mapping():
    cfg = V2DropConfig()
    # paper: 192 = drop 50/70/100 %, 128 = 72/75/100 %, 64 = 95/95/100 % at layers 3/17/22 (official counting)
    assert v2drop_schedule(192, 576, 32, cfg) == ([3, 17, 22], [288, 86, 1])
    assert v2drop_schedule(128, 576, 32, cfg) == ([3, 17, 22], [161, 40, 1])
    assert v2drop_schedule(64, 576, 32, cfg) == ([3, 17, 22], [28, 1, 1])
    assert official_counts(576, (0.5, 0.5, 0.0)) == [288, 144, 1]  # the released code's constants
    with pytest.raises(ValueError, match="raise final_keep"):  # one token at the last stage: average <= 396.3
        v2drop_schedule(400, 576, 32, V2DropConfig(keep_means="average"))
    with pytest.warns(UserWarning, match="V2Drop: keep=400 is not a reachable average.*after the last stage"):
        assert v2drop_schedule(400, 576, 32, cfg)[1][-1] == 400  # "auto": keep counted after the last stage
    assert v2drop_schedule(400, 576, 32, V2DropConfig(final_keep=16))[1][-1] == 16
    for keep in (100, 150, 250, 390):
        layers, counts = v2drop_schedule(keep, 576, 32, cfg)
        assert counts[-1] == 1 and counts == sorted(counts, reverse=True)
        assert abs(ls.layer_average(layers, counts, 576, 32) - keep) <= 1 / 16
    assert v2drop_schedule(100, 576, 32, cfg)[1] == [98, 18, 1]


def test_depth_scaling_and_shallow_llms():
    assert ls.scaled_layers((8 / 32, 16 / 32, 24 / 32), 8) == [2, 4, 6]
    assert ls.scaled_layers((3 / 32, 17 / 32, 22 / 32), 8) == [1, 4, 6]
    assert ls.scaled_layers((3 / 32, 17 / 32, 22 / 32), 40) == [4, 21, 28]
    assert ls.scaled_layers((3 / 32, 17 / 32, 22 / 32), 2) == [1, 1, 1]  # one possible stage: they merge
    # the 2-layer testbed (144 tokens): layer-averaged budgets below 72.5 are out of reach
    with pytest.raises(ValueError, match="keep >= 73.*keep_means='last'"):
        pdrop_schedule(16, 144, 2, PDropConfig(keep_means="average"))
    with pytest.raises(ValueError, match="keep >= 73"):
        v2drop_schedule(48, 144, 2, V2DropConfig(keep_means="average"))
    for keep in (16, 32, 48):  # the testbed's budgets: "auto" counts them after the single stage
        with pytest.warns(UserWarning, match="PyramidDrop: keep=.* counts it after the last stage"):
            assert pdrop_schedule(keep, 144, 2, PDropConfig())[:2] == ([1], [keep])
        assert pdrop_schedule(keep, 144, 2, PDropConfig(keep_means="last"))[:2] == ([1], [keep])
        with pytest.warns(UserWarning, match="V2Drop"):
            assert v2drop_schedule(keep, 144, 2, V2DropConfig()) == ([1], [keep])
        assert v2drop_schedule(keep, 144, 2, V2DropConfig(keep_means="last")) == ([1], [keep])
    assert v2drop_schedule(100, 144, 2, V2DropConfig()) == ([1], [56])  # (144 + 56) / 2
    layers, counts, _ = pdrop_schedule(9, 144, 8, PDropConfig(keep_means="last"))
    assert layers == [2, 4, 6] and counts[-1] == 9 and counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("cls, bad", [
    (PDropConfig, dict(layer_fractions=(0.5, 0.25))), (PDropConfig, dict(layer_fractions=(0.0,))),
    (PDropConfig, dict(keep_means="final")), (PDropConfig, dict(positions="renumber")), (PDropConfig, dict(n_tokens=0)),
    (V2DropConfig, dict(layer_fractions=())), (V2DropConfig, dict(keep_ratios=(0.5, 0.5))),
    (V2DropConfig, dict(keep_ratios=(0.5, 1.5, 0.0))), (V2DropConfig, dict(final_keep=0)),
    (V2DropConfig, dict(metric="l1")), (V2DropConfig, dict(keep_means="total")),
])
def test_config_validation(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1.0, 400.0), min_size=1, max_size=3), st.lists(st.integers(1, 16), min_size=3, max_size=3),
       st.integers(0, 5))
def test_fit_counts_hits_the_total_or_stays_closest(exact, lengths, shift):
    exact = sorted(exact, reverse=True)
    lengths = lengths[: len(exact)]
    floor = [max(1, int(x)) for x in exact]
    total = sum(s * c for s, c in zip(lengths, floor)) + shift  # reachable by small moves of the counts
    counts = ls.fit_counts(exact, lengths, total, ceiling=400)
    assert counts == sorted(counts, reverse=True) and all(1 <= c <= 400 for c in counts)
    assert all(abs(c - x) <= 7 for c, x in zip(counts, exact))
    if shift == 0:
        assert sum(s * c for s, c in zip(lengths, counts)) == total


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(0, 10_000))
def test_variation_is_the_per_token_distance(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    cur, prev = torch.randn(b, n, 8, generator=g), torch.randn(b, n, 8, generator=g)
    want = torch.stack([torch.stack([torch.dist(cur[i, j], prev[i, j]) for j in range(n)]) for i in range(b)])
    torch.testing.assert_close(variation(cur, prev), want)
    cos = (cur * prev).sum(-1) / (cur.norm(dim=-1) * prev.norm(dim=-1))
    torch.testing.assert_close(variation(cur, prev, "cosine"), 1 - cos)
    assert torch.equal(variation(cur, cur), torch.zeros(b, n))


def test_flops_count_layer_by_layer():
    shape = get_preset("llava-1.5-7b")
    assert tokens_per_layer("pdrop", 270, shape) == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    assert tokens_per_layer("v2drop", 192, shape) == [576] * 3 + [288] * 14 + [86] * 5 + [1] * 10
    for method in ("pdrop", "v2drop"):
        for keep in (64, 128, 192):
            assert abs(sum(tokens_per_layer(method, keep, shape)) / 32 - keep) < 4  # V2Drop paper: 66.7/131/193.8


# -- the correctness matrix on the tiny LLaVA-1.5 (its fixtures: tests/test_llm_methods.py) -------------------------
@pytest.mark.parametrize("case", CASES)
def test_full_budget_reproduces_unpatched_model_and_remove_is_exact(tiny8, pixels, case):
    method, opts = CASES[case]
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    ref = logits(model, inputs, pixels)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    vlprune.apply(model, method, N, **opts)
    torch.testing.assert_close(logits(model, inputs, pixels), ref, rtol=0, atol=1e-5)
    vlprune.apply(model, method, 5, **opts)
    assert not torch.allclose(logits(model, inputs, pixels)[:, -1], ref[:, -1], atol=1e-4)  # pruning changes it
    vlprune.remove(model)
    assert torch.equal(logits(model, inputs, pixels), ref)
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert "forward" not in model.__dict__ and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case", CASES)
def test_cached_generate_equals_no_cache_reference(tiny8, pixels, case):
    method, opts = CASES[case]
    inputs = tiny8.prompt_ids(QUESTIONS, left_pad=True)
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the batch must be left-padded"
    vlprune.apply(tiny8.model, method, 5, **opts)
    assert len(assert_cached_generate_equals_no_cache(tiny8.model, inputs, pixels)) == 3


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_per_sample(tiny8, pixels, case):
    method, opts = CASES[case]
    vlprune.apply(tiny8.model, method, 5, **opts)
    assert_batch_equals_per_sample(tiny8.model, tiny8, pixels)


@pytest.mark.parametrize("method", ["pdrop", "v2drop"])
@pytest.mark.parametrize("keep", [5, 8, 12])
def test_llm_receives_scheduled_token_counts(tiny8, pixels, method, keep):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    text = inputs["input_ids"].shape[1] - N
    vlprune.apply(model, method, keep)
    seen = _tokens_per_layer(model, inputs, pixels)
    if method == "pdrop":
        layers, counts, _ = pdrop_schedule(keep, N, LAYERS, PDropConfig())
    else:
        layers, counts = v2drop_schedule(keep, N, LAYERS, V2DropConfig())
    bounds, per_seg = [0] + layers + [LAYERS], [N] + counts
    assert seen == [text + per_seg[s] for s in range(len(per_seg)) for _ in range(bounds[s], bounds[s + 1])]
    assert abs(sum(seen) / LAYERS - text - keep) <= 1 / 8  # the budget is the layer average
    kept = vlprune.last_selection(model).indices
    assert all(len(k) == counts[-1] and len(set(k.tolist())) == len(k) and (k < N).all() for k in kept)


def test_static_cache_is_refused(tiny8, pixels):
    vlprune.apply(tiny8.model, "v2drop", 5)
    with pytest.raises(NotImplementedError, match="StaticCache"):
        with torch.no_grad():
            tiny8.model.generate(**tiny8.prompt_ids(QUESTIONS), pixel_values=pixels, max_new_tokens=2,
                                 do_sample=False, cache_implementation="static")


def test_official_positions_refuse_ragged_batches(next_t):
    batch, _ = _rows(next_t, "multi")
    vlprune.apply(next_t.model, "pdrop", 5, positions="official")
    try:
        with pytest.raises(NotImplementedError, match="positions='original'"):
            with torch.no_grad():
                next_t.model(**batch)
    finally:
        vlprune.remove(next_t.model)


# -- LLaVA-NeXT and Qwen2.5-VL: ragged batches ----------------------------------------------------------------------
RAGGED = {"pdrop": ("pdrop", {}, 5), "v2drop": ("v2drop", {"keep_means": "last"}, 5),
          "pdrop-avg": ("pdrop", {"n_tokens": 20}, 8)}


@torch.no_grad()
@pytest.mark.parametrize("case", ["dead", "multi"])
@pytest.mark.parametrize("name", RAGGED)
def test_next_ragged_batch_equals_per_sample_and_no_cache_loop(next_t, name, case):
    method, opts, keep = RAGGED[name]
    m = next_t.model
    batch, singles = _rows(next_t, case)
    vlprune.apply(m, method, keep, **opts)
    try:
        gen = _generate(m, batch).sequences
        out = m(**batch).logits[:, -1]
        kept = vlprune.last_selection(m).indices
        p = _state(m).pruner.current
        assert _visible_visual(m, batch) == _scheduled(m, list(p.orig_counts), [1, 1] if case == "dead" else [2, 1])
        i = 0
        for b, one in enumerate(singles):
            assert torch.equal(_generate(m, one).sequences[0, -4:], gen[b, -4:])
            torch.testing.assert_close(m(**one).logits[:, -1][0], out[b], rtol=1e-4, atol=1e-4)
            for idx in vlprune.last_selection(m).indices:
                assert torch.equal(idx, kept[i])
                i += 1
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("method", ["pdrop", "v2drop"])
def test_next_and_qwen_full_budget_is_the_unpatched_model(next_t, qwen_t, method):
    for t in (next_t, qwen_t):
        m = t.model
        sizes = [(20, 36), (40, 16)] if t is next_t else [(32, 32), (24, 40)]
        im = t.images(sizes)
        batch = {**t.prompt_ids(["what color is the circle ?", "how many star are there ?"], im, [1, 1]), **im}
        ref = m(**batch).logits[:, -1]
        vlprune.apply(m, method, 80, n_tokens=80)  # more than any image has
        try:
            torch.testing.assert_close(m(**batch).logits[:, -1], ref, rtol=0, atol=1e-5)
        finally:
            vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("method", ["pdrop", "v2drop"])
def test_qwen_ragged(qwen_t, method):
    """Qwen2.5-VL (M-RoPE): images of 16 and 15 merged tokens, no padding (dead columns); batch = each sample alone,
    cached generate = the no-cache loop."""
    t, m = qwen_t, qwen_t.model
    sizes, questions = [(32, 32), (24, 40)], ["what color is the circle ?", "what color is the red circle ?"]
    im = t.images(sizes)
    batch = {**t.prompt_ids(questions, im, [1, 1]), **im}
    vlprune.apply(m, method, 6, n_tokens=16)
    try:
        gen = _generate(m, batch).sequences
        kept = vlprune.last_selection(m).indices
        assert len(set(_state(m).pruner.current.orig_counts)) == 2
        assert_qwen_samples_equal_batch(t, batch, sizes, questions, gen, kept, 4)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)
