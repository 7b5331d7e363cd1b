"""FlowCut and HoloV on a tiny random LLaVA-1.5 (6 x 6 patches): identity at full budget, exact remove, cached
generate == a no-cache loop, batch == per sample, K tokens reach the LLM; the generic in-tower pruning runner; HoloV's
selection functions (hypothesis). The official-code checks are in tests/oracles/test_oracle_{flowcut,holov}.py."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, logits
from vlprune.api import _state
from vlprune.methods import holov
from vlprune.models.clip_signals import ClipVisionSignals
from vlprune.models.encoder_pruning import run_blocks_pruned

METHODS = ["flowcut", "holov"]
N = 36


@pytest.fixture(scope="module")
def t6():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=2, grid=6)


@pytest.fixture(scope="module")
def px6():
    return torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))


@pytest.fixture(autouse=True)
def _clean(t6):
    yield
    vlprune.remove(t6.model)


@pytest.mark.parametrize("method", METHODS)
def test_full_budget_reproduces_unpatched_model(t6, px6, method):
    inputs = t6.prompt_ids(QUESTIONS)
    ref = logits(t6.model, inputs, px6)
    vlprune.apply(t6.model, method, N)
    torch.testing.assert_close(logits(t6.model, inputs, px6), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_remove_restores_bit_identical_model(t6, px6, method):
    model, inputs = t6.model, t6.prompt_ids(QUESTIONS)
    ref = logits(model, inputs, px6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vlprune.apply(model, method, 5)
    assert not torch.equal(logits(model, inputs, px6)[:, -1], ref[:, -1])
    vlprune.remove(model)
    assert "forward" not in model.__dict__ and _state(model) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, inputs, px6), ref)


@pytest.mark.parametrize("method", METHODS)
def test_cached_generate_equals_no_cache_reference(t6, px6, method):
    model, inputs = t6.model, t6.prompt_ids(QUESTIONS, left_pad=True)
    vlprune.apply(model, method, 7)
    steps = 5
    with torch.no_grad():
        cached = model.generate(**inputs, pixel_values=px6, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                suppress_tokens=[3, 4])  # never EOS or an <image> placeholder
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(steps):
            last = model(input_ids=ids, attention_mask=mask, pixel_values=px6, use_cache=False).logits[:, -1]
            nxt = last.index_fill(-1, torch.tensor([3, 4]), float("-inf")).argmax(-1, True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(cached, ids)


@pytest.mark.parametrize("method,options", [("flowcut", {}), ("holov", {}), ("holov", {"order": "raster"})])
def test_batch_equals_per_sample(t6, px6, method, options):
    vlprune.apply(t6.model, method, 9, **options)
    assert_batch_equals_per_sample(t6.model, t6, px6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", [1, 5, 20])
def test_llm_receives_k_visual_tokens(t6, px6, method, keep):
    model, inputs = t6.model, t6.prompt_ids(QUESTIONS)
    seen = []
    vlprune.apply(model, method, keep)
    layer = model.model.language_model.layers[0]
    h = layer.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]),
                                        with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, pixel_values=px6)
    finally:
        h.remove()
    assert seen == [inputs["input_ids"].shape[1] - N + keep]
    for idx in vlprune.last_selection(model).indices:  # HoloV: fewer where a crop overflowed (zero tokens)
        assert len(set(idx.tolist())) == len(idx) and (len(idx) == keep if method == "flowcut" else len(idx) <= keep)


@torch.no_grad()
def test_run_blocks_pruned_is_the_tower_without_cuts_and_gathers_rows_between_blocks(t6, px6):
    tower = t6.model.model.vision_tower
    src = ClipVisionSignals(tower, px6, -2, grid=(6, 6))
    hidden, origin = src.prune_in_encoder(lambda *a: None)
    torch.testing.assert_close(hidden, src.hidden_states[src.f], rtol=0, atol=1e-6)
    assert torch.equal(origin, torch.arange(N + 1).expand(2, -1))
    rows = torch.tensor([[0, 3, 5, 30], [0, 1, 2, 36]])
    hidden, origin = src.prune_in_encoder(lambda i, block, h, out: rows if i == 0 else None)
    manual = tower.pre_layrnorm(tower.embeddings(px6))
    manual = tower.encoder.layers[0](manual, None)
    manual = torch.gather(manual, 1, rows[..., None].expand(-1, -1, manual.shape[-1]))
    for block in tower.encoder.layers[1 : src.f]:
        manual = block(manual, None)
    torch.testing.assert_close(hidden, manual, rtol=0, atol=1e-6)
    assert torch.equal(origin, rows)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 80), crops=st.integers(1, 20), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000),
       peak=st.floats(0.0, 8.0))
def test_holov_selection_properties(n, crops, frac, seed, peak):
    """Crops tile the sequence; shares add up to keep; at most keep distinct patches, each crop's within it and
    ranked by attention; refill reaches exactly keep."""
    keep = max(1, min(n, round(frac * n)))
    g = torch.Generator().manual_seed(seed)
    tokens, attn = torch.randn(n, 8, generator=g), torch.softmax(peak * torch.randn(n, generator=g), -1)
    bounds = holov.crop_bounds(n, crops)
    assert bounds[0][0] == 0 and bounds[-1][1] == n and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    scores = torch.stack([holov.crop_score(tokens[s:e], attn[s:e], 0.09, 1e-6) for s, e in bounds])
    assert sum(holov.allocate(scores, keep, 1e-6)) == keep
    cfg = holov.HoloVConfig(crops=crops)
    kept = holov.select_image(tokens, attn, keep, cfg)
    assert len(set(kept.tolist())) == kept.numel() <= keep and (kept.numel() == 0 or int(kept.max()) < n)
    for s, e in bounds:
        mine = kept[(kept >= s) & (kept < e)]
        if 0 < mine.numel() < e - s:  # the crop's top tokens by attention
            assert attn[mine].min() >= attn[s:e][~torch.isin(torch.arange(s, e), mine)].max()
    refill = holov.select_image(tokens, attn, keep, holov.HoloVConfig(crops=crops, overflow="refill"))
    assert refill.unique().numel() == keep


@pytest.mark.parametrize("method,options,match", [
    ("holov", {"crops": 0}, "crops must be"), ("holov", {"overflow": "drop"}, "overflow must be"),
    ("holov", {"order": "spatial"}, "order must be"), ("flowcut", {"cumulative_weight": 2.0}, "cumulative_weight"),
])
def test_option_errors(t6, method, options, match):
    with pytest.raises(ValueError, match=match):
        vlprune.apply(t6.model, method, 4, **options)
    assert _state(t6.model) is None


@pytest.mark.parametrize("method", METHODS)
def test_llm_flops_are_the_papers_encoder_side_values(method):
    """Encoder-side: every LLM layer sees keep tokens (HoloV's zero tokens included): DeSAP table 6's 0.416 / 0.833 /
    1.253 TFLOPs on LLaVA-1.5-7B at 64 / 128 / 192."""
    from vlprune.flops import method_tflops, tokens_per_layer
    from vlprune.presets import get_preset

    shape = get_preset("llava-1.5-7b")
    assert tokens_per_layer(method, 64, shape) == [64] * 32
    assert [round(method_tflops(method, k, shape), 3) for k in (64, 128, 192)] == [0.416, 0.833, 1.253]


def test_prefill_flops_count_flowcuts_tower_cut_and_holovs_projector():
    from vlprune.presets import get_preset
    from vlprune.speed_flops import clip_tower_flops, prefill_flops

    shape, keep, n = get_preset("llava-1.5-7b"), 64, 576
    base = prefill_flops(shape, "visionzip", keep, 60)
    dv, d = shape.vision_hidden, shape.hidden
    last_block = clip_tower_flops(shape, 1) - clip_tower_flops(shape, 0)
    cut_block = clip_tower_flops(shape, 1, [keep + 1]) - clip_tower_flops(shape, 0)
    assert prefill_flops(shape, "flowcut", keep, 60) == pytest.approx(base - last_block + cut_block)
    assert prefill_flops(shape, "holov", keep, 60) == pytest.approx(base + (n - keep) * (dv * d + d * d))


def test_vllm_plugin_refuses_holov_and_takes_flowcut():
    """The vLLM plugin hands the tower's features to vLLM's projector: HoloV (projected tokens, zero tokens) is refused
    with the reason; FlowCut only needs the tower (ClipVisionSignals.prune_in_encoder)."""
    from vlprune.vllm_plugin.settings import parse_settings

    with pytest.raises(NotImplementedError, match="HoloV scores the projected tokens"):
        parse_settings({"method": "holov", "keep": 16})
    assert parse_settings({"method": "flowcut", "keep": 16}).prunes
