"""In-LLM and hybrid methods (VisionDrop, ASAP, FastV+SG-BiMask) on a tiny random 8-layer LLaVA-1.5.

"Same kept sets" in the cache test: a cached ``generate`` decides what to prune once, in the prefill, from the
prompt. A no-cache loop re-runs the prompt plus the tokens generated so far, so a stage that reads query rows
after the prompt (ASAP's "all"/"text"/"last" rankings) would decide on a longer sequence. The reference loop
therefore hands every stage callback (score/select) the PROMPT PART of its inputs (causal attention makes
that part identical to the prefill), i.e. the decisions are exactly the prefill's; the model itself still runs
on the whole sequence without a cache. VisionDrop only reads image-query rows, so for it this changes nothing.
"""

import pytest
import torch

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, assert_cached_generate_equals_no_cache, logits
from vlprune.llm_pruning import LLMPruner, LLMStage
from vlprune.methods.asap import ASAPConfig, FastVBiMaskConfig, consolidate, minmax
from vlprune.methods.visiondrop import (
    VisionDropConfig, average_tokens, encoder_tokens, plan as visiondrop_plan, schedule,
)

METHODS = ["visiondrop", "asap", "fastv+bimask"]
N = 16  # visual tokens per image of the tiny model
LAYERS = 8


@pytest.fixture(scope="module")
def tiny8():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=LAYERS)


@pytest.fixture(autouse=True)
def _clean(tiny8):
    yield
    vlprune.remove(tiny8.model)


@pytest.mark.parametrize("method", METHODS)
def test_full_budget_reproduces_unpatched_model(tiny8, pixels, method):
    inputs = tiny8.prompt_ids(QUESTIONS)
    ref = logits(tiny8.model, inputs, pixels)
    vlprune.apply(tiny8.model, method, N)
    torch.testing.assert_close(logits(tiny8.model, inputs, pixels), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_cached_generate_equals_no_cache_reference(tiny8, pixels, method):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS, left_pad=True)
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the batch must be left-padded"
    vlprune.apply(model, method, 5)
    assert_cached_generate_equals_no_cache(model, inputs, pixels)


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_sample(tiny8, pixels, method):
    model = tiny8.model
    vlprune.apply(model, method, 5)
    assert_batch_equals_per_sample(model, tiny8, pixels)


def _tokens_per_layer(model, inputs, pixels):
    seen = {}
    handles = [layer.register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
        for i, layer in enumerate(model.model.language_model.layers)]  # after the pruner's hooks
    try:
        with torch.no_grad():
            model(**inputs, pixel_values=pixels)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(LAYERS)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", [2, 6, 11])
def test_llm_receives_scheduled_token_counts(tiny8, pixels, method, keep):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    text = inputs["input_ids"].shape[1] - N
    vlprune.apply(model, method, keep)
    seen = _tokens_per_layer(model, inputs, pixels)
    kept = vlprune.last_selection(model).indices
    if method == "visiondrop":
        layers, counts, _ = schedule(keep, LAYERS, VisionDropConfig(), N)
        bounds = [0] + layers + [LAYERS]
        expected = [text + counts[s] for s in range(len(counts)) for _ in range(bounds[s], bounds[s + 1])]
        assert seen == expected
        assert abs(sum(seen) / LAYERS - text - keep) < 0.5  # the budget is the layer average (within rounding)
        assert all(len(k) <= counts[-1] for k in kept)  # [CLS] stands for no patch
    else:
        assert seen == [text + N] * 2 + [text + keep] * (LAYERS - 2)
        assert all(len(k) == keep for k in kept)
    assert all(len(set(k.tolist())) == len(k) and (k >= 0).all() and (k < N).all() for k in kept)


def test_visiondrop_selection_maps_through_encoder(tiny8, pixels):
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    cfg = VisionDropConfig()
    vlprune.apply(model, "visionzip", encoder_tokens(6, cfg, N), contextual_ratio=cfg.contextual_ratios[0])
    with torch.no_grad():
        model(**inputs, pixel_values=pixels)
    enc = vlprune.last_selection(model)
    vlprune.apply(model, "visiondrop", 6)
    with torch.no_grad():
        model(**inputs, pixel_values=pixels)
    sel = vlprune.last_selection(model)
    assert sel.method == "visiondrop" and sel.grids == [(4, 4)] * 2
    for k, e, a in zip(sel.indices, enc.indices, sel.assign):
        assert set(k.tolist()) <= set(e.tolist())
        assert a.shape == (N,) and set(a[k].tolist()) <= set(range(schedule(6, LAYERS, cfg, N)[1][-1]))


def test_visiondrop_official_schedule_on_32_layers():
    cfg = VisionDropConfig()
    layers, counts, ctx = schedule(32, 32, cfg, 576)
    assert layers == [8, 16, 24] and counts == [48, 35, 26, 19] and ctx == [6, 5, 4, 3]
    assert encoder_tokens(32, cfg) == 48
    stages = visiondrop_plan(32, 32, cfg)
    assert [(s.layer, s.keep) for s in stages] == [(8, 35), (16, 26), (24, 19)]
    for k in range(2, 577):  # the layer average is exactly the budget on 32 layers
        assert average_tokens(*schedule(k, 32, cfg, 576)[:2], 32) == k
    assert schedule(64, 32, cfg)[1] == [96, 70, 52, 38]
    assert schedule(576, 32, cfg, 576)[1] == [576] * 4  # full budget: nothing pruned
    assert [s.layer for s in visiondrop_plan(32, 40, cfg)] == [10, 20, 30]


def test_fastv_bimask_with_last_token_query_is_fastv(tiny8, pixels):
    """SG-BiMask only rewrites rows of visual queries, so ranking by the last token gives FastV's choice."""
    model = tiny8.model
    inputs = tiny8.prompt_ids(QUESTIONS)
    vlprune.apply(model, "fastv", 5)
    ref = logits(model, inputs, pixels)
    kept = vlprune.last_selection(model).indices
    vlprune.apply(model, "fastv+bimask", 5, query="last")
    torch.testing.assert_close(logits(model, inputs, pixels), ref, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(kept, vlprune.last_selection(model).indices))


def test_consolidation_merges_toward_saliency_and_refills():
    feats = torch.tensor([[1.0, 0, 0], [2.0, 0.01, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 1, 1.0], [1.0, 1, 0]])[None]
    attention = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0, 0.2]])
    s_hat = torch.tensor([[1.0, 0.5, 0.2, 0.9, 0.1, 0.3]])
    ranking, merged = consolidate(feats, attention, s_hat, k=3, threshold=0.9)
    kept = torch.sort(torch.topk(ranking, 3).indices).values
    assert kept.tolist() == [[0, 2, 3]]  # token 1 joins token 0, its slot goes to the best pruned token (3)
    w0, w1 = 1.0 + 1e-6, 0.5 + 1e-6
    torch.testing.assert_close(merged[0, 0], (w0 * feats[0, 0] + w1 * feats[0, 1]) / (w0 + w1))
    torch.testing.assert_close(merged[0, 2:], feats[0, 2:])
    # never more sources than the pruned pool can refill: the budget stays exactly k
    same = torch.ones(1, 4, 3)
    ranking, _ = consolidate(same, torch.tensor([[4.0, 3, 2, 1]]), torch.tensor([[1.0, 0.7, 0.4, 0]]), 3, 0.5)
    assert torch.sort(torch.topk(ranking, 3).indices).values.tolist() == [[0, 2, 3]]  # 1 is absorbed, 2 not
    assert torch.allclose(minmax(torch.tensor([[2.0, 4.0, 3.0]])), torch.tensor([[0.0, 1.0, 0.5]]), atol=1e-5)


def test_static_cache_is_refused(tiny8, pixels):
    model = tiny8.model
    vlprune.apply(model, "asap", 5)
    with pytest.raises(NotImplementedError, match="StaticCache"):
        with torch.no_grad():
            model.generate(**tiny8.prompt_ids(QUESTIONS), pixel_values=pixels, max_new_tokens=2, do_sample=False,
                           cache_implementation="static")


@pytest.mark.parametrize("cls, bad", [
    (VisionDropConfig, dict(layer_fractions=(0.5, 0.25))),
    (VisionDropConfig, dict(layer_fractions=(0.0, 0.5))),
    (VisionDropConfig, dict(stage_ratios=(1.5, 1.0, 0.5))),
    (VisionDropConfig, dict(stage_ratios=(1.0, 1.2, 0.9, 0.5))),
    (VisionDropConfig, dict(contextual_ratios=(0.1, 0.1, 1.0, 0.1))),
    (ASAPConfig, dict(lambda_max=0.0)),
    (ASAPConfig, dict(lambda_max=1.5)),
    (ASAPConfig, dict(threshold=1.5)),
    (ASAPConfig, dict(query="first")),
    (ASAPConfig, dict(layer=0)),
    (FastVBiMaskConfig, dict(query="cls")),
])
def test_config_validation(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


def test_plans_that_do_not_fit_are_refused(tiny8):
    with pytest.raises(ValueError, match="do not fit"):
        schedule(8, 3, VisionDropConfig())
    with pytest.raises(ValueError, match="decoder layer"):
        vlprune.apply(tiny8.model, "asap", 4, layer=LAYERS)
    with pytest.raises(TypeError, match="no option"):
        vlprune.apply(tiny8.model, "asap", 4, lambda_maximum=0.5)
    layers = tiny8.model.model.language_model.layers
    score = lambda inputs: inputs.image_pos.float()  # noqa: E731
    with pytest.raises(ValueError, match="same decoder layer"):
        LLMPruner(layers, [LLMStage(2, 4, score), LLMStage(2, 3, score)], rope=None)
    with pytest.raises(ValueError, match="scores at layer"):
        LLMPruner(layers, [LLMStage(2, 4, score), LLMStage(4, 3, score, score_layer=1)], rope=None)
    assert all(not layer._forward_pre_hooks for layer in layers)
