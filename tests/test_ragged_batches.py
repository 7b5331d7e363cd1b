"""In-LLM pruning of batches whose samples hold different numbers of visual tokens (LLaVA-NeXT images of different
sizes, different image counts; Qwen2.5-VL likewise).

Each sample keeps ``keep x its images`` visual tokens; the rows stay one rectangle by also dropping padding columns,
or keeping dropped tokens as masked ("dead") columns where padding does not suffice. Cases: a left-padded batch
whose padding absorbs the difference, one where it cannot (dead columns), one without any padding (SDPA passes no
mask: vlprune builds one), samples with 2 and 1 images; eager attention (additive masks).
"""
from __future__ import annotations

import pytest
import torch

import vlprune
from helpers import append_tokens, decide_on_prompt
from vlprune.api import _state
from vlprune.models import get_adapter
from vlprune.testing import tiny_llava_next

SPECIAL = [3, 4, 5, 6, 7]  # never generated (EOS, image and vision markers)
STEPS = 4
# case: (image sizes, images per sample, questions)
CASES = {
    "padded": ([(20, 36), (40, 16)], [1, 1], ["what color is the circle ?", "how many star are there ?"]),
    # row 0 has 4 visual tokens fewer and 6 words more: padding cannot make up for row 1's 4 extra drops
    "dead": ([(20, 36), (40, 16)], [1, 1], ["is the red circle left of the blue square in this image ?",
                                             "how many star ?"]),
    # 4 visual tokens fewer, 4 words more: equal lengths, no padding at all (SDPA gets no mask)
    "unpadded": ([(20, 36), (40, 16)], [1, 1], ["is the red circle left of square ?", "how many star ?"]),
    "multi": ([(20, 36), (30, 30), (40, 16)], [2, 1], ["what color is the circle ?", "how many star are there ?"]),
}


def _inputs(t, sizes, per_sample, questions, pixels=None):
    im = t.images(sizes)
    if pixels is not None:
        im["pixel_values"] = pixels
    return {**t.prompt_ids(questions, im, per_sample), **im}


def _rows(t, case):
    """The batch of a case and its samples alone (each with its own rows of the batch's pixel_values)."""
    sizes, per_sample, questions = CASES[case]
    batch = _inputs(t, sizes, per_sample, questions)
    assert bool((batch["attention_mask"] == 0).any()) == (case != "unpadded")
    singles, first = [], 0
    for b, n in enumerate(per_sample):
        pv = batch["pixel_values"][first: first + n]
        singles.append(_inputs(t, sizes[first: first + n], [n], questions[b:], pixels=pv))
        first += n
    return batch, singles


def _visible_visual(m, inputs):
    """Per decoder layer and sample: the visual tokens the last prompt token can attend to (after the pruner)."""
    seen = {}

    def hook(i):
        def fn(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            seen[i] = mask[:, 0, -1] if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None
        return fn

    layers = m.model.language_model.layers
    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            m(**inputs)
    finally:
        for h in handles:
            h.remove()
    p = _state(m).pruner.current
    out = []
    for i in range(len(layers)):
        row_counts = []
        for b in range(len(p.n_images)):
            visual = torch.isin(p.layer_cols[i][b], p.orig_image_pos[b, : p.orig_counts[b]])
            vis = seen[i]
            if vis is not None:
                visual &= vis[b] if vis.dtype == torch.bool else vis[b] == 0
            row_counts.append(int(visual.sum()))
        out.append(row_counts)
    return out


def _scheduled(m, entering, per_sample):
    """Visual tokens per layer and sample the stages schedule: ``keep x images``, never more than before."""
    stages = _state(m).pruner.stages
    out = []
    for i in range(len(m.model.language_model.layers)):
        row = []
        for n, k in zip(entering, per_sample):
            for s in stages:
                if s.layer <= i:
                    n = min(n, s.keep * k)
            row.append(n)
        out.append(row)
    return out


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastv", "asap", "visiondrop"])
@pytest.mark.parametrize("case", list(CASES))
def test_ragged_batch_equals_per_sample(next_t, method, case):
    """Generated tokens, last-token logits (1e-4) and kept patches of every image as for each sample alone; each
    sample's LLM layers see exactly the scheduled number of visual tokens."""
    m = next_t.model
    batch, singles = _rows(next_t, case)
    counts = (batch["input_ids"] == 4).sum(-1).tolist()
    assert len(set(counts)) > 1  # the samples differ in visual tokens
    vlprune.apply(m, method, 5)
    try:
        gen = _generate(m, batch).sequences
        out = m(**batch).logits[:, -1]
        kept = vlprune.last_selection(m).indices
        p = _state(m).pruner.current
        if method != "visiondrop":  # (its encoder step already evens the counts out)
            assert (p.dead is not None) == (case in ("dead", "unpadded"))
        entering = list(p.orig_counts)
        seen = _visible_visual(m, batch)
        assert seen == _scheduled(m, entering, CASES[case][1])
        assert seen[-1] != seen[0]
        i = 0
        for b, one in enumerate(singles):
            assert torch.equal(_generate(m, one).sequences[0, -STEPS:], gen[b, -STEPS:])
            single = m(**one).logits[:, -1]
            torch.testing.assert_close(single[0], out[b], rtol=1e-4, atol=1e-4)
            for idx in vlprune.last_selection(m).indices:
                assert torch.equal(idx, kept[i])
                i += 1
        assert i == len(kept)
    finally:
        vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastv", "asap", "visiondrop"])
def test_ragged_full_budget_is_the_unpatched_model(next_t, method):
    m = next_t.model
    batch, _ = _rows(next_t, "multi")
    ref = m(**batch).logits[:, -1]
    vlprune.apply(m, method, get_adapter(m).tokens_per_image())  # 80: more than any image has
    try:
        torch.testing.assert_close(m(**batch).logits[:, -1], ref, rtol=0, atol=1e-5)
    finally:
        vlprune.remove(m)


def _generate(m, inputs):
    return m.generate(**inputs, max_new_tokens=STEPS, do_sample=False, suppress_tokens=SPECIAL, output_logits=True,
                      return_dict_in_generate=True)


def assert_generate_equals_no_cache_loop(m, inputs):
    """Cached greedy generate() == greedy decoding without a cache (the stages deciding on the prompt part only):
    the same tokens, and the logits of every step to 1e-4."""
    out = _generate(m, inputs)
    kept = vlprune.last_selection(m).indices
    extra = [0]
    decide_on_prompt(m, extra)
    cur = dict(inputs)
    for step in range(STEPS):
        extra[0] = cur["input_ids"].shape[1] - inputs["input_ids"].shape[1]
        logits = m(**cur, use_cache=False).logits[:, -1]
        torch.testing.assert_close(out.logits[step], logits, rtol=1e-4, atol=1e-4)
        logits[:, SPECIAL] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        append_tokens(cur, nxt)
    assert torch.equal(out.sequences, cur["input_ids"])
    assert all(torch.equal(a, b) for a, b in zip(kept, vlprune.last_selection(m).indices))


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastv", "asap", "visiondrop"])
@pytest.mark.parametrize("case", ["dead", "unpadded", "multi"])
def test_ragged_cached_generate_equals_no_cache_loop(next_t, method, case):
    m = next_t.model
    batch, _ = _rows(next_t, case)
    vlprune.apply(m, method, 3)
    try:
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastv", "visiondrop"])
def test_ragged_qwen(qwen_t, method):
    """Qwen2.5-VL: images of 16 and 15 merged tokens, no padding (dead columns, a built mask); the batch decodes
    as each sample alone and as the no-cache loop."""
    t = qwen_t
    m = t.model
    sizes, questions = [(32, 32), (24, 40)], ["what color is the circle ?", "what color is the red circle ?"]
    im = t.images(sizes)
    batch = {**t.prompt_ids(questions, im, [1, 1]), **im}
    assert (batch["attention_mask"] == 1).all() and len(set((batch["input_ids"] == 4).sum(-1).tolist())) == 2
    vlprune.apply(m, method, 3 if method == "fastv" else 11)  # visiondrop: 17 tokens per image -> 16 and 15 enter
    try:
        gen = _generate(m, batch).sequences
        kept = vlprune.last_selection(m).indices
        assert len(set(_state(m).pruner.current.orig_counts)) == 2 and _state(m).pruner.current.dead is not None
        assert_qwen_samples_equal_batch(t, batch, sizes, questions, gen, kept, STEPS)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)


@torch.no_grad()
def test_ragged_eager_attention_hides_dead_columns_in_additive_masks():
    t = tiny_llava_next(attn="eager")
    m = t.model
    batch, singles = _rows(t, "dead")
    vlprune.apply(m, "fastv", 5)
    try:
        out = m(**batch).logits[:, -1]
        assert _state(m).pruner.current.dead is not None
        for b, one in enumerate(singles):
            torch.testing.assert_close(m(**one).logits[:, -1][0], out[b], rtol=1e-4, atol=1e-4)
        assert_generate_equals_no_cache_loop(m, batch)
    finally:
        vlprune.remove(m)


@torch.no_grad()
def test_ragged_batch_needing_masked_columns_without_a_4d_mask_is_refused(next_t, monkeypatch):
    """An attention that takes no 4-D mask (flash attention passes None) cannot hide dead columns: a clear error."""
    from vlprune import compat

    m = next_t.model
    batch, _ = _rows(next_t, "unpadded")
    monkeypatch.setattr(compat, "attention_implementation", lambda layer: "flash_attention_2")
    vlprune.apply(m, "fastv", 5)
    try:
        with pytest.raises(NotImplementedError, match="attn_implementation='sdpa'.*separate batches"):
            m(**batch)
        m(**_rows(next_t, "padded")[0])  # padding absorbs the difference: no masked column, no mask needed
    finally:
        vlprune.remove(m)


@torch.no_grad()
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("method", ["visionzip", "visiondrop", "fastv"])
def test_unpadded_batch_whose_rows_shrink_unevenly(next_t, method, mask):
    """Rows of equal length (no padding) whose images differ: encoder-side pruning shrinks them to different lengths.
    The shorter rows are padded on the left (every row still ends with its last token) and, when the call had no
    attention mask, one is added; the batch answers as each sample alone."""
    m = next_t.model
    batch, singles = _rows(next_t, "unpadded")
    if not mask:
        batch.pop("attention_mask")
        for one in singles:
            one.pop("attention_mask")
    vlprune.apply(m, method, 5)
    try:
        out = m(**batch).logits[:, -1]
        gen = m.generate(**batch, max_new_tokens=STEPS, do_sample=False, suppress_tokens=SPECIAL)
        for b, one in enumerate(singles):
            torch.testing.assert_close(m(**one).logits[:, -1][0], out[b], rtol=1e-4, atol=1e-4)
            alone = m.generate(**one, max_new_tokens=STEPS, do_sample=False, suppress_tokens=SPECIAL)
            assert torch.equal(alone[0, -STEPS:], gen[b, -STEPS:])
    finally:
        vlprune.remove(m)


def assert_qwen_samples_equal_batch(t, batch, sizes, questions, gen, kept, steps: int) -> None:
    """Each sample of a Qwen2.5-VL batch (one image each, ``sizes``), generated alone on the patched ``t.model``,
    gives the batch's last ``steps`` tokens and kept indices."""
    m = t.model
    for b in range(len(sizes)):
        one_im = t.images(sizes[b: b + 1])
        n = int(batch["image_grid_thw"][:b].prod(-1).sum())
        one_im["pixel_values"] = batch["pixel_values"][n: n + int(batch["image_grid_thw"][b].prod())]
        one = {**t.prompt_ids(questions[b: b + 1], one_im, [1]), **one_im}
        assert torch.equal(_generate(m, one).sequences[0, -steps:], gen[b, -steps:])
        assert torch.equal(vlprune.last_selection(m).indices[0], kept[b])
