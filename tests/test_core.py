"""apply/remove on a tiny random LLaVA-1.5: identity, restore, cache == no-cache, batch == per-sample."""
import pytest
import torch

import vlprune
from helpers import QUESTIONS, assert_batch_equals_per_sample, logits
from vlprune.api import _state

ENCODER = ["desap", "vispruner", "visionzip", "random", "prumerge", "prumerge+"]
ALL = ENCODER + ["fastv"]


def extra(tiny, method):
    if method == "desap":
        return dict(processor=tiny.tokenizer, clip=tiny.clip, clip_tokenizer=tiny.clip_tokenizer)
    return {}


@pytest.fixture(autouse=True)
def _clean(tiny):
    yield
    vlprune.remove(tiny.model)


@pytest.mark.parametrize("method", ALL)
def test_full_budget_reproduces_unpatched_model(tiny, pixels, method):
    inputs = tiny.prompt_ids(QUESTIONS)
    ref = logits(tiny.model, inputs, pixels)
    vlprune.apply(tiny.model, method, 16, **extra(tiny, method))
    out = logits(tiny.model, inputs, pixels)
    torch.testing.assert_close(out[:, -1], ref[:, -1], rtol=0, atol=1e-5)
    if method != "fastv":  # encoder-side methods keep the sequence length
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [{"merge_space": "projected"}, {"salient_layer": "last"}])
def test_desap_options_at_full_budget_reproduce_unpatched_model(tiny, pixels, options):
    """Projected merging: the adapter skips its projector for already projected tokens (one cluster per token)."""
    inputs = tiny.prompt_ids(QUESTIONS)
    ref = logits(tiny.model, inputs, pixels)
    vlprune.apply(tiny.model, "desap", 16, **extra(tiny, "desap"), **options)
    torch.testing.assert_close(logits(tiny.model, inputs, pixels), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_remove_restores_bit_identical_model(tiny, pixels, method):
    model = tiny.model
    inputs = tiny.prompt_ids(QUESTIONS)
    ref = logits(model, inputs, pixels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vlprune.apply(model, method, 5, **extra(tiny, method))
    pruned = logits(model, inputs, pixels)
    assert not torch.equal(pruned[:, -1], ref[:, -1])
    vlprune.remove(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__ and _state(model) is None
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, inputs, pixels), ref)


def test_apply_twice_replaces_previous_patch(tiny, pixels):
    model = tiny.model
    inputs = tiny.prompt_ids(QUESTIONS)
    vlprune.apply(model, "random", 4)
    once = logits(model, inputs, pixels)
    vlprune.apply(model, "fastv", 6)
    vlprune.apply(model, "random", 4)
    assert sum(1 for layer in model.model.language_model.layers if layer._forward_pre_hooks) == 0
    assert torch.equal(logits(model, inputs, pixels), once)


def test_context_manager(tiny, pixels):
    inputs = tiny.prompt_ids(QUESTIONS)
    ref = logits(tiny.model, inputs, pixels)
    with vlprune.pruned(tiny.model, "vispruner", 6):
        assert not torch.equal(logits(tiny.model, inputs, pixels)[:, -1], ref[:, -1])
    assert torch.equal(logits(tiny.model, inputs, pixels), ref)


def _freeze_llm_selection(model):
    """Make the in-LLM stages replay the cached run's kept set (a no-cache loop would re-rank every step)."""
    state = _state(model)
    if state.pruner is None:
        return
    kept = state.pruner.history[-1]  # (B, k) prompt positions kept by the stage

    def replay(inputs, kept=kept, pruner=state.pruner):
        ids = pruner.current.image_ids  # prompt positions of surviving visual tokens
        return (ids.unsqueeze(-1) == kept.unsqueeze(1)).any(-1).float()

    for stage in state.pruner.stages:
        stage.score = replay


@pytest.mark.parametrize("method", ALL)
def test_cached_generate_equals_no_cache_reference(tiny, pixels, method):
    model = tiny.model
    inputs = tiny.prompt_ids(QUESTIONS, left_pad=True)
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the batch must be left-padded"
    kw = extra(tiny, method)
    if method == "desap":  # the reference loop appends tokens after the question: pin the question
        kw["question"] = [q.replace(" ?", "?") for q in QUESTIONS]
    vlprune.apply(model, method, 5, **kw)
    steps = 6
    with torch.no_grad():
        cached = model.generate(**inputs, pixel_values=pixels, max_new_tokens=steps, do_sample=False,
                                min_new_tokens=steps)
        kept_cached = [t.clone() for t in vlprune.last_selection(model).indices]
        _freeze_llm_selection(model)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(steps):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    assert cached.shape == ids.shape
    assert torch.equal(cached, ids)
    for a, b in zip(kept_cached, vlprune.last_selection(model).indices):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ALL)
def test_batch_equals_per_sample(tiny, pixels, method):
    model = tiny.model
    vlprune.apply(model, method, 5, **extra(tiny, method))
    assert_batch_equals_per_sample(model, tiny, pixels)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("keep", [1, 5, 11])
def test_llm_receives_k_visual_tokens(tiny, pixels, method, keep):
    model = tiny.model
    inputs = tiny.prompt_ids(QUESTIONS)
    full_len = inputs["input_ids"].shape[1]
    n = 16
    seen = {}
    layers = model.model.language_model.layers
    vlprune.apply(model, method, keep, **extra(tiny, method))  # its hooks run before the counting hooks
    handles = [layer.register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.__setitem__(i, (a[0] if a else kw["hidden_states"]).shape[1]), with_kwargs=True)
        for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(**inputs, pixel_values=pixels)
    finally:
        for h in handles:
            h.remove()
    expected = full_len - n + keep
    if method == "fastv":
        assert seen[0] == seen[1] == full_len and all(seen[i] == expected for i in range(2, len(layers)))
    else:
        assert all(v == expected for v in seen.values())
    # VisionZip spends one token on [CLS] (official), PruMerge one on the sum of the pruned patches, so they stand
    # for one patch fewer
    patches = keep - 1 if (method == "visionzip" and keep >= 3) or method.startswith("prumerge") else keep
    for idx in vlprune.last_selection(model).indices:
        assert len(idx) == patches and len(set(idx.tolist())) == patches


def test_selection_reports_questions_and_grid(tiny, pixels):
    vlprune.apply(tiny.model, "desap", 6, **extra(tiny, "desap"))
    with torch.no_grad():
        tiny.model(**tiny.prompt_ids(QUESTIONS), pixel_values=pixels)
    kept = vlprune.last_selection(tiny.model)
    assert kept.questions == ["what color is the circle?", "how many star are there in this image?"]
    assert kept.grids == [(4, 4), (4, 4)] and kept.method == "desap" and kept.keep == 6
    assert all(a.shape == (16,) and int(a.max()) < 6 for a in kept.assign)


def test_multi_image_prompt(tiny, pixels):
    model = tiny.model
    inputs = tiny.prompt_ids(["what color is the circle ?"], n_images=2)
    vlprune.apply(model, "desap", 4, **extra(tiny, "desap"))
    with torch.no_grad():
        out = model.generate(**inputs, pixel_values=pixels, max_new_tokens=3, do_sample=False)
    kept = vlprune.last_selection(model)
    assert len(kept.indices) == 2 and out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("method", ALL + ["visiondrop"])
def test_beams_and_returned_sequences_at_full_budget_equal_unpatched(tiny, pixels, method):
    """generate(num_beams=2, num_return_sequences=2): generate() repeats the rows; the prompt given back, the
    pruned features and the in-LLM book-keeping follow (was: a size error / an IndexError)."""
    inputs = tiny.prompt_ids(QUESTIONS)
    kw = dict(max_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        ref = tiny.model.generate(**inputs, pixel_values=pixels, **kw)
        vlprune.apply(tiny.model, method, 16, **extra(tiny, method))
        out = tiny.model.generate(**inputs, pixel_values=pixels, **kw)
    assert out.shape[0] == 4 and torch.equal(out[:, : inputs["input_ids"].shape[1]],
                                             inputs["input_ids"].repeat_interleave(2, 0))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("method", ALL + ["visiondrop"])
def test_sampled_returned_sequences_keep_the_budget(tiny, pixels, method):
    inputs = tiny.prompt_ids(QUESTIONS)
    vlprune.apply(tiny.model, method, 5, **extra(tiny, method))
    torch.manual_seed(0)
    with torch.no_grad():
        out = tiny.model.generate(**inputs, pixel_values=pixels, max_new_tokens=3, do_sample=True,
                                  num_return_sequences=3)
    assert out.shape[0] == 6 and torch.equal(out[:, : inputs["input_ids"].shape[1]],
                                             inputs["input_ids"].repeat_interleave(3, 0))
    assert all(len(i) <= 5 for i in vlprune.last_selection(tiny.model).indices)
