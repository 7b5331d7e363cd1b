"""SparseVLM ``version="v1"`` (rank-adaptive counts, four stages) on tiny random LLaVA-1.5 (8 layers) and LLaVA-NeXT
(Qwen2.5-VL: tests/test_sparsevlm.py, parametrized): options, exact remove(),
batch == per-sample (samples of one batch keep different, data-dependent counts), measured tokens per layer, FLOPs
refused; cached generate == no-cache loop: tests/test_sparsevlm.py. The authors' code: tests/oracles/."""
from __future__ import annotations

import pytest
import torch

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, logits
from test_ragged_batches import _generate, _rows, assert_generate_equals_no_cache_loop
from vlprune.flops import measured_tflops, measured_tokens_per_layer, tokens_per_layer, visual_flops
from vlprune.methods.sparsevlm import SparseVLMConfig, V1_PRESETS, average_tokens, schedule, stage_layers
from vlprune.presets import get_preset

V1 = dict(version="v1", scale=1.0, bias=0.0)  # rank ~ 4-6 raters on the tiny prompts: 4-6 of 16 tokens kept


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=8)


def test_presets_layers_and_options():
    assert V1_PRESETS == {"mme": (13.5, 0.0, 192), "pope": (9.0, 6.0, 128), "textvqa": (0.8, 0.0, 64)}
    cfg = SparseVLMConfig(version="v1", preset="pope")
    assert (cfg.scale, cfg.bias) == (9.0, 6.0)
    assert stage_layers(32, cfg) == [3, 7, 16, 20]  # the official pruning_loc [2, 6, 15, 19], dropped one layer later
    assert stage_layers(32, SparseVLMConfig()) == [3, 7, 16]
    with pytest.raises(ValueError, match="preset= one of.*'mme'.*'pope'.*'textvqa'"):
        SparseVLMConfig(version="v1")
    with pytest.raises(ValueError, match="scale"):
        SparseVLMConfig(version="v1", scale=2.0)
    for fn in (schedule, average_tokens):
        with pytest.raises(ValueError, match="schedule"):
            fn(64, 32, SparseVLMConfig(version="v1", preset="mme"))


@pytest.mark.parametrize("bad", [dict(version="v2"), dict(scale=1.0, bias=0.0), dict(preset="mme"),
                                 dict(version="v1", preset="gqa"), dict(version="v1", preset="mme", scale=9.0),
                                 dict(version="v1", scale=0.0, bias=0.0), dict(version="v1", scale=1.0, bias=-1.0),
                                 dict(version="v1", scale=float("inf"), bias=0.0)])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        SparseVLMConfig(**bad)


def test_preset_budget_must_match_keep_and_flops_are_refused(tiny8):
    with pytest.raises(ValueError, match="keep .* must be 64"):
        vlprune.apply(tiny8.model, "sparsevlm", 8, version="v1", preset="textvqa")
    vlprune.remove(tiny8.model)
    with pytest.raises(ValueError, match="no analytic FLOPs"):
        tokens_per_layer("sparsevlm", 192, get_preset("llava-1.5-7b"), version="v1", preset="mme")
    assert len(tokens_per_layer("sparsevlm", 192, get_preset("llava-1.5-7b"))) == 32  # v1.5 still counts


@torch.no_grad()
def test_remove_is_exact_and_counts_are_measured(tiny8, pixels):
    """remove() restores the model; each layer receives the measured count of every sample (samples differ)."""
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = logits(model, inputs, pixels)
    seen = {}
    vlprune.apply(model, "sparsevlm", 8, **V1)
    handles = [layer.register_forward_pre_hook(  # after the pruner's hooks: what each layer receives
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
        for i, layer in enumerate(model.model.language_model.layers)]
    try:
        assert not torch.allclose(logits(model, inputs, pixels)[:, -1], ref[:, -1])
        measured = measured_tokens_per_layer(model)
        shape = get_preset("llava-1.5-7b")
        assert measured_tflops(model, shape) == [visual_flops(row, shape.hidden, shape.ffn) / 1e12 for row in measured]
        seen_v1 = dict(seen)
        vlprune.apply(model, "sparsevlm", 8)
        model(**inputs, pixel_values=pixels)
        assert measured_tflops(model, shape) is None  # v1.5: analytic (tokens_per_layer)
    finally:
        for h in handles:
            h.remove()
        vlprune.remove(model)
    text = inputs["input_ids"].shape[1] - 16
    assert [seen_v1[i] - text for i in range(8)] == [max(row[i] for row in measured) for i in range(8)]
    assert len({row[-1] for row in measured}) > 1 and all(row[-1] < 16 for row in measured)  # per-sample counts
    assert torch.equal(logits(model, inputs, pixels), ref)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)


@pytest.mark.parametrize("scale,bias", [(1.0, 0.0), (0.5, 2.0)])
def test_batch_equals_per_sample(tiny8, pixels, scale, bias):
    vlprune.apply(tiny8.model, "sparsevlm", 8, version="v1", scale=scale, bias=bias)
    try:
        assert_batch_equals_per_sample(tiny8.model, tiny8, pixels)
    finally:
        vlprune.remove(tiny8.model)


def test_renumbering_a_batch_with_different_counts_is_refused(tiny8, pixels):
    vlprune.apply(tiny8.model, "sparsevlm", 8, positions="official", **V1)
    try:
        with pytest.raises(NotImplementedError, match="positions='original'"), torch.no_grad():
            tiny8.model(**tiny8.prompt_ids(QUESTIONS), pixel_values=pixels)
    finally:
        vlprune.remove(tiny8.model)


@torch.no_grad()
def test_next_multi_image_batch_equals_per_sample(next_t):
    """LLaVA-NeXT, samples with different images and image counts (4-layer LLM: stages before 1, 2, 3; the fourth
    does not fit, so three layer_fractions): each sample as alone, cached generate == the no-cache loop."""
    m = next_t.model
    batch, singles = _rows(next_t, "multi")
    vlprune.apply(m, "sparsevlm", 5, version="v1", scale=2.0, bias=1.0, layer_fractions=(0.25, 0.5, 0.75))
    try:
        gen = _generate(m, batch).sequences
        out = m(**batch).logits[:, -1]
        for b, one in enumerate(singles):
            assert torch.equal(_generate(m, one).sequences[0, -4:], gen[b, -4:])
            torch.testing.assert_close(m(**one).logits[0, -1], out[b], rtol=1e-4, atol=1e-4)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)
