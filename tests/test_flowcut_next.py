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
@pytest.mark.parametrize("positions", ["official", "original"])
def test_mixed_image_sizes_batch_equals_samples(t, positions):
    """Images of different sizes (different visual-token counts, the cut keeps keep of each): the batch's logits,
    kept patches and cached generation equal each sample alone, with the official renumbered positions (rows that
    drop fewer columns keep dead ones, which the positions skip) and with positions='original'."""
    m = t.model
    questions = ["what is it ?", "is the big circle red ?"]
    batch = _inputs(t, SIZES, questions)
    vlprune.apply(m, "flowcut", 6, positions=positions)
    logits, steps = _two_cached_steps(m, batch)
    kept = vlprune.last_selection(m).indices
    for b in range(2):
        one = _inputs(t, SIZES[b: b + 1], questions[b: b + 1])
        one["pixel_values"] = batch["pixel_values"][b: b + 1, : one["pixel_values"].shape[1]]
        alone, alone_steps = _two_cached_steps(m, one)
        torch.testing.assert_close(alone[0], logits[b], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(alone_steps[0], steps[b], rtol=1e-4, atol=1e-4)  # cached decoding, per row
        assert torch.equal(vlprune.last_selection(m).indices[0], kept[b])
    vlprune.remove(m)


def _two_cached_steps(m, inputs):
    """Prefill logits (B, V) and the logits of generate()'s next two (cached) steps (B, 2, V)."""
    out = m.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.logits[0], torch.stack(out.logits[1:], 1)


def test_prefill_bound_counts_the_tiles_cut_and_no_newlines():
    """``vlprune bench``'s prefill bound on a LLaVA-NeXT image: every tile's tower cut to keep // 2 + 1 rows in the
    feature block, keep // 2 x tiles tokens projected and in LLM layers 0-1 (no newline), keep after layer 1."""
    from vlprune.methods.flowcut import tower_rows
    from vlprune.presets import get_preset
    from vlprune.speed_flops import clip_tower_flops, llm_layer_flops, prefill_flops
    from vlprune.speed_models import next_layout

    shape = get_preset("llava-next-7b")
    image = next_layout(shape, (672, 672))
    assert (image.tiles, image.patches, image.newlines) == (5, 2880, 48)
    blocks, keep = shape.vision_layers - 1, 320
    vision = 5 * clip_tower_flops(shape, blocks, tower_rows(keep // 2, 576, blocks))
    projector = 800 * (shape.vision_hidden * shape.hidden + shape.hidden * shape.hidden)
    llm = 2 * llm_layer_flops(800 + 10, shape) + 30 * llm_layer_flops(320 + 10, shape)
    assert prefill_flops(shape, "flowcut", keep, 10, image=image) == pytest.approx(vision + projector + llm)
