"""FlowCut's LLaVA-NeXT path (authors' layout: no image_newline, a cut after LLM layer 1, positions renumbered) on a
tiny LLaVA-NeXT: full budget equals the model fed that layout, cached generation equals a manual cached loop,
a batch equals its samples, remove() is exact, and the options that conflict with the authors' path are refused.
The authors' code itself: tests/oracles/test_oracle_flowcut_next.py."""
import re

import pytest
import torch

import vlprune
from test_families import SPECIAL, _greedy_cached, _llm_input

SIZES = [(20, 36), (40, 16)]  # 1x2 and 2x1 grids (16 px tiles): different visual-token counts


@pytest.fixture(scope="module")
def t():
    from vlprune.testing import tiny_llava_next

    return tiny_llava_next(seed=2, vision_layers=6)


def _inputs(t, sizes, questions, seed=0):
    im = t.images(sizes, seed=seed)
    return {**t.prompt_ids(questions, im, [1] * len(sizes)), **im}


@torch.no_grad()
def test_full_budget_equals_the_model_fed_the_authors_layout(t):
    """keep >= 2 x tile patches: the tower cuts nothing, the LLM stage neither; the LLM input is the unpatched
    model's with its image_newline tokens taken out, and the logits are the model's on that input."""
    from vlprune.models import get_adapter

    m = t.model
    inputs = _inputs(t, SIZES[:1], ["what is it ?"])
    h_ref, _ = _llm_input(m, inputs)
    newline = m.model.image_newline
    rows = ~(h_ref[0] == newline).all(-1)
    assert int((~rows).sum()) == get_adapter(m).layout(SIZES[0]).grid[0]  # one newline per grid row
    lm = m.model.language_model
    ref = m.lm_head(lm(inputs_embeds=h_ref[:, rows]).last_hidden_state)[:, -1]
    vlprune.apply(m, "flowcut", get_adapter(m).tokens_per_image())
    h, _ = _llm_input(m, inputs)
    out = m(**inputs).logits[:, -1]
    vlprune.remove(m)
    torch.testing.assert_close(h, h_ref[:, rows], rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_generate_equals_cached_loop_and_batch_equals_samples(t):
    """Two images of one size, prompts of different lengths (left padding): generate() equals a manual cached loop
    and each sample generated alone; the cut after layer 1 keeps keep tokens."""
    m = t.model
    questions = ["what is it ?", "what color is the big circle on the left ?"]
    batch = _inputs(t, [SIZES[0]] * 2, questions, seed=1)
    batch["pixel_values"][1] = _inputs(t, SIZES[:1], questions[:1], seed=2)["pixel_values"][0]
    vlprune.apply(m, "flowcut", 6)
    kw = dict(max_new_tokens=4, do_sample=False, suppress_tokens=SPECIAL)
    gen = m.generate(**batch, **kw)
    assert torch.equal(gen, _greedy_cached(m, batch, 4))
    logits = m(**batch).logits[:, -1]
    kept = vlprune.last_selection(m).indices
    assert all(len(k) == 6 for k in kept) and not torch.equal(kept[0], kept[1])
    n = batch["input_ids"].shape[1]
    for b in range(2):
        one = _inputs(t, SIZES[:1], questions[b: b + 1])
        one["pixel_values"] = batch["pixel_values"][b: b + 1]
        torch.testing.assert_close(m(**one).logits[:, -1][0], logits[b], rtol=1e-4, atol=1e-4)
        assert torch.equal(vlprune.last_selection(m).indices[0], kept[b])
        alone = m.generate(**one, **kw)
        assert torch.equal(alone[0, -4:], gen[b, n:])
    vlprune.remove(m)


@torch.no_grad()
def test_mixed_image_sizes(t):
    """The official renumbering runs one image size per batch (a clear error otherwise); positions='original'
    (vlprune's convention) runs mixed batches, each sample as alone."""
    m = t.model
    batch = _inputs(t, SIZES, ["what is it ?", "is it red ?"])
    vlprune.apply(m, "flowcut", 6)
    with pytest.raises(NotImplementedError, match="FlowCut on LLaVA-NeXT.*positions='original'"):
        m(**batch)
    vlprune.apply(m, "flowcut", 6, positions="original")
    logits = m(**batch).logits[:, -1]
    for b in range(2):
        one = _inputs(t, SIZES[b: b + 1], ["what is it ?", "is it red ?"][b: b + 1])
        one["pixel_values"] = batch["pixel_values"][b: b + 1]
        torch.testing.assert_close(m(**one).logits[:, -1][0], logits[b], rtol=1e-4, atol=1e-4)
    vlprune.remove(m)


@torch.no_grad()
def test_remove_is_exact_and_conflicting_options_are_refused(t):
    m = t.model
    inputs = _inputs(t, SIZES[:1], ["what is it ?"])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ref = m(**inputs).logits
    vlprune.apply(m, "flowcut", 6)
    m.generate(**inputs, max_new_tokens=2, do_sample=False)
    vlprune.remove(m)
    assert torch.equal(m(**inputs).logits, ref)
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert not any(l._forward_pre_hooks for l in m.model.language_model.layers)
    with pytest.raises(ValueError, match=re.escape("runs with {'newlines': 'none'} (its authors' layout)")):
        vlprune.apply(m, "flowcut", 6, adapter_options={"newlines": "rows"})
    with pytest.raises(ValueError, match="budget='global' only"):
        vlprune.apply(m, "flowcut", 6, budget="tile")
    vlprune.apply(m, "flowcut", 1)
    with pytest.raises(ValueError, match="keep must be >= 2"):
        m(**inputs)
    vlprune.remove(m)
    vlprune.apply(m, "flowcut", 6, adapter_options={"newlines": "none"})  # the authors' own value is accepted
    vlprune.remove(m)


def test_flops_count_the_tiles_then_the_cut_after_layer_1():
    """``vlprune flops --model llava-next-7b --method flowcut``: keep // 2 per tile (5 tiles) in layers 0-1, at most
    (unpadding drops some), then keep; LLaVA-1.5 keeps keep everywhere (tower only)."""
    from vlprune.flops import tokens_per_layer
    from vlprune.presets import get_preset

    assert tokens_per_layer("flowcut", 320, get_preset("llava-next-7b")) == [800] * 2 + [320] * 30
    assert tokens_per_layer("flowcut", 81, get_preset("llava-next-7b"), llm_layer=3) == [200] * 4 + [81] * 28
    assert tokens_per_layer("flowcut", 64, get_preset("llava-1.5-7b")) == [64] * 32
