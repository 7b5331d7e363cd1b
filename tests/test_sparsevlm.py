"""SparseVLM on tiny random LLaVA-1.5 (8 layers), LLaVA-NeXT and Qwen2.5-VL: the correctness matrix of the in-LLM
methods (full budget == unpatched, cached generate == no-cache loop, batch == per-sample, scheduled counts, exact
remove), its schedule and FLOPs, and properties of its pure functions. The authors' code: tests/oracles/."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, logits
from test_ragged_batches import _generate, assert_qwen_samples_equal_batch, _rows, _visible_visual, assert_generate_equals_no_cache_loop
from vlprune.api import _state
from vlprune.flops import tokens_per_layer
from vlprune.models import get_adapter
from vlprune.methods.sparsevlm import (
    SparseVLMConfig, average_tokens, cluster_merge, recycle, recycled_count, schedule, text_raters,
)
from vlprune.presets import get_preset

N, LAYERS = 16, 8


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=LAYERS)


def _expected_counts(entering: int, keep: int, n_images: int = 1, tokens: int = N, layers: int = LAYERS
                     ) -> list[int]:
    """Visual tokens of one sample per decoder layer: the schedule, recycled tokens on top."""
    cfg = SparseVLMConfig()  # (the tiny 4-layer LLMs: stages before layers 1, 2, 3)
    at, counts = schedule(keep, layers, cfg, tokens)
    out, cur = [], entering
    for i in range(layers):
        for layer, c in zip(at, counts):
            if layer == i and c * n_images < cur:
                cur = c * n_images + recycled_count(cur - c * n_images, cfg)[1]
        out.append(cur)
    return out


def test_official_schedule_on_llava_1_5():
    cfg = SparseVLMConfig()
    assert schedule(64, 32, cfg) == ([3, 7, 16], [66, 30, 17])
    assert schedule(128, 32, cfg) == ([3, 7, 16], [303, 110, 36])
    assert schedule(192, 32, cfg) == ([3, 7, 16], [300, 200, 110])
    # the official code's own count ("equal token num": each layer at its output, recycled tokens included)
    assert [round(average_tokens(k, 32, cfg, official=True), 2) for k in (64, 128, 192)] == [64.81, 128.62, 192.03]
    assert schedule(16, 32, cfg, 144) == ([3, 7, 16], [17, 8, 4])  # 64/576 of the testbed's 144 tokens
    assert schedule(576, 32, cfg)[1] == [576] * 3


def test_flops_count_every_layer_with_recycled_tokens():
    shape = get_preset("llava-1.5-7b")
    per_layer = tokens_per_layer("sparsevlm", 64, shape)
    assert per_layer == [576] * 3 + [82] * 4 + [32] * 9 + [18] * 16
    assert sum(per_layer) / 32 == average_tokens(64, 32, SparseVLMConfig())
    # LLaVA-NeXT (2880 tokens): 320 = 64/576 of the image, the 64 list x 5 (recycled tokens on top)
    per_layer = tokens_per_layer("sparsevlm", 320, get_preset("llava-next-7b"))
    assert per_layer[3] == 330 + recycled_count(2880 - 330, SparseVLMConfig())[1]


@pytest.mark.parametrize("bad", [dict(layer_fractions=(0.5, 0.25, 0.75)), dict(layer_fractions=(0.5,)),
                                 dict(stage_ratios=(1.0,)), dict(recycle_ratio=0.0), dict(cluster_divisor=0),
                                 dict(positions="shifted")])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        SparseVLMConfig(**bad)


def test_stages_that_do_not_fit_are_refused(tiny8):
    with pytest.raises(ValueError, match="layer_fractions"):
        vlprune.apply(tiny8.model, "sparsevlm", 4, layer_fractions=(0.7, 0.8, 0.9), stage_ratios=(1, 1, 1))
    assert schedule(4, 4, SparseVLMConfig())[0] == [1, 2, 3]  # shallow: one layer apart
    vlprune.remove(tiny8.model)


# -- pure functions ------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(3, 40), st.integers(1, 39), st.integers(0, 2**31 - 1))
def test_recycle_keeps_budget_plus_cluster_averages(n, budget, seed):
    budget = min(budget, n - 1)
    g = torch.Generator().manual_seed(seed)
    scores, feats = torch.rand(2, n, generator=g), torch.randn(2, n, 8, generator=g)
    cfg = SparseVLMConfig()
    kept, centres, tokens = recycle(scores, feats, budget, cfg)
    m, c = recycled_count(n - budget, cfg)
    assert kept.shape == (2, budget) and centres.shape == (2, c) and tokens.shape == (2, c, 8)
    for b in range(2):
        top = set(torch.topk(scores[b], budget).indices.tolist())
        assert set(kept[b].tolist()) == top and not top & set(centres[b].tolist())
        rest = sorted(set(range(n)) - top, key=lambda i: -float(scores[b, i]))[:m]
        assert set(centres[b].tolist()) <= set(rest)
    # every cluster average is a convex-like combination: sum of members / (size + 1e-6)
    cen, merged = cluster_merge(feats[:, :m], c)
    assert torch.isfinite(merged).all() and len(set(cen[0].tolist())) == c


def test_text_raters_pick_tokens_above_the_mean():
    emb = torch.zeros(1, 6, 2)
    emb[0, 0:2] = torch.tensor([1.0, 0.0])  # two visual tokens pointing at axis 0
    emb[0, 2:6] = torch.tensor([[3.0, 0], [0, 3.0], [1.0, 0], [0, 0]])
    is_img = torch.tensor([[True, True, False, False, False, False]])
    raters = text_raters(emb, is_img, emb[:, 2:], torch.tensor([[True, True, True, True]]))
    assert raters[0].tolist() == [True, False, False, False]


# -- LLaVA-1.5 -----------------------------------------------------------------------------------------------------
def test_full_budget_reproduces_unpatched_model_and_remove_is_exact(tiny8, pixels):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = logits(model, inputs, pixels)
    vlprune.apply(model, "sparsevlm", N)
    torch.testing.assert_close(logits(model, inputs, pixels), ref, rtol=0, atol=1e-5)
    vlprune.remove(model)
    vlprune.apply(model, "sparsevlm", 4)
    assert not torch.allclose(logits(model, inputs, pixels)[:, -1], ref[:, -1])
    vlprune.remove(model)
    assert torch.equal(logits(model, inputs, pixels), ref)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)


@pytest.mark.parametrize("version", ["v1.5", "v1"])
@pytest.mark.parametrize("positions", ["original", "official"])
def test_cached_generate_equals_no_cache_reference(tiny8, pixels, positions, version):
    """Greedy tokens and every step's logits (1e-4) as a no-cache loop whose stages decide on the prompt part (v1:
    the rank counts of the prompt; keep=5 is then a label)."""
    inputs = {**tiny8.prompt_ids(QUESTIONS, left_pad=True), "pixel_values": pixels}
    if positions == "official":  # renumbering needs the same visual tokens in every row: one sample
        inputs = {**tiny8.prompt_ids(QUESTIONS[1:]), "pixel_values": pixels[1:]}
    v1 = dict(version="v1", scale=1.0, bias=0.0) if version == "v1" else {}
    vlprune.apply(tiny8.model, "sparsevlm", 5, positions=positions, **v1)
    try:
        with torch.no_grad():
            assert_generate_equals_no_cache_loop(tiny8.model, inputs)
    finally:
        vlprune.remove(tiny8.model)


def test_batch_equals_per_sample(tiny8, pixels):
    vlprune.apply(tiny8.model, "sparsevlm", 5)
    try:
        assert_batch_equals_per_sample(tiny8.model, tiny8, pixels)
    finally:
        vlprune.remove(tiny8.model)


@torch.no_grad()
def test_right_padded_batch_equals_per_sample(tiny8, pixels):
    """Right padding: the raters are each sample's own text tokens (the padding after them is no text), and the
    logits of every sample's last token are those of the sample alone."""
    model = tiny8.model
    batch = tiny8.prompt_ids(QUESTIONS, left_pad=False)
    assert (batch["attention_mask"][:, -1] == 0).any()
    vlprune.apply(model, "sparsevlm", 5)
    try:
        out = model(**batch, pixel_values=pixels).logits
        kept = vlprune.last_selection(model).indices
        ends = batch["attention_mask"].sum(-1) - 1 - (N - _expected_counts(N, 5)[-1])  # the shorter sequence
        for i, q in enumerate(QUESTIONS):
            single = model(**tiny8.prompt_ids([q]), pixel_values=pixels[i: i + 1]).logits[0, -1]
            torch.testing.assert_close(out[i, int(ends[i])], single, rtol=1e-4, atol=1e-4)
            assert torch.equal(vlprune.last_selection(model).indices[0], kept[i])
    finally:
        vlprune.remove(model)


@pytest.mark.parametrize("keep", [2, 5, 11])
def test_llm_receives_scheduled_token_counts(tiny8, pixels, keep):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    text = inputs["input_ids"].shape[1] - N
    seen = {}
    vlprune.apply(model, "sparsevlm", keep)
    handles = [layer.register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
        for i, layer in enumerate(model.model.language_model.layers)]
    try:
        with torch.no_grad():
            model(**inputs, pixel_values=pixels)
        kept = vlprune.last_selection(model).indices
    finally:
        for h in handles:
            h.remove()
        vlprune.remove(model)
    expected = _expected_counts(N, keep)
    assert [seen[i] - text for i in range(LAYERS)] == expected
    assert expected[-1] < expected[0]
    assert all(len(k) == expected[-1] and len(set(k.tolist())) == len(k) and (k >= 0).all() and (k < N).all()
               for k in kept)


def test_static_cache_is_refused(tiny8, pixels):
    vlprune.apply(tiny8.model, "sparsevlm", 5)
    try:
        with pytest.raises(NotImplementedError, match="StaticCache"), torch.no_grad():
            tiny8.model.generate(**tiny8.prompt_ids(QUESTIONS), pixel_values=pixels, max_new_tokens=2,
                                 cache_implementation="static")
    finally:
        vlprune.remove(tiny8.model)


# -- LLaVA-NeXT and Qwen2.5-VL: ragged batches -----------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("case", ["dead", "multi"])
def test_next_ragged_batch_equals_per_sample_and_no_cache_loop(next_t, case):
    """Samples with different visual tokens and images: each sample as alone (tokens, logits 1e-4, kept patches),
    each layer sees the scheduled count of every sample, cached generate == the no-cache loop."""
    from test_ragged_batches import CASES

    m = next_t.model
    batch, singles = _rows(next_t, case)
    vlprune.apply(m, "sparsevlm", 5)
    try:
        gen = _generate(m, batch).sequences
        out = m(**batch).logits[:, -1]
        kept = vlprune.last_selection(m).indices
        entering = list(_state(m).pruner.current.orig_counts)
        seen = _visible_visual(m, batch)
        for b, (n, k) in enumerate(zip(entering, CASES[case][1])):
            assert [row[b] for row in seen] == _expected_counts(n, 5, k, get_adapter(m).tokens_per_image(), len(seen))
        assert seen[-1] != seen[0]
        i = 0
        for b, one in enumerate(singles):
            assert torch.equal(_generate(m, one).sequences[0, -4:], gen[b, -4:])
            torch.testing.assert_close(m(**one).logits[0, -1], out[b], rtol=1e-4, atol=1e-4)
            for idx in vlprune.last_selection(m).indices:
                assert torch.equal(idx, kept[i])
                i += 1
        assert i == len(kept)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("options", [{}, dict(version="v1", scale=2.0, bias=1.0, layer_fractions=(0.25, 0.5, 0.75))],
                         ids=["v1.5", "v1"])
def test_qwen_ragged_batch_equals_per_sample_and_no_cache_loop(qwen_t, options):
    t, m = qwen_t, qwen_t.model
    sizes, questions = [(32, 32), (24, 40)], ["what color is the circle ?", "what color is the red circle ?"]
    im = t.images(sizes)
    batch = {**t.prompt_ids(questions, im, [1, 1]), **im}
    vlprune.apply(m, "sparsevlm", 5, **options)
    try:
        gen = _generate(m, batch).sequences
        kept = vlprune.last_selection(m).indices
        assert_qwen_samples_equal_batch(t, batch, sizes, questions, gen, kept, 4)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)
