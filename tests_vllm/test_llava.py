"""Greedy generation through vLLM with the plugin equals ``model.generate()`` with ``vlprune.apply``."""
from __future__ import annotations

import pytest
import torch

import vlprune
from tiny import GRID, PROMPT, generate, images
from vlprune.vllm_plugin import hf_overrides

MAX_NEW = 8
N = GRID * GRID


@pytest.fixture(scope="module")
def hf(model_dir):
    """The same checkpoint in transformers, with its processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # as vLLM's ignore_eos: always MAX_NEW tokens
    return model, AutoProcessor.from_pretrained(model_dir)


def reference(hf, pics, method: str | None, keep: int | None) -> tuple[list[list[int]], list[torch.Tensor]]:
    """transformers' greedy tokens (one prompt per image) and kept patches (None without pruning)."""
    model, processor = hf
    tokens, kept = [], []
    for pic in pics:
        inputs = processor(text=PROMPT, images=pic, return_tensors="pt")
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == N
        t, k = generate(model, processor, PROMPT, pic, method, keep, MAX_NEW)
        tokens.append(t)
        kept.append(k)
    return tokens, kept


def served(llm, pics) -> tuple[list[list[int]], list[int]]:
    """vLLM's greedy tokens and prompt lengths, one request per image, all in one batch."""
    from vllm import SamplingParams

    outs = llm.generate([{"prompt": PROMPT, "multi_modal_data": {"image": p}} for p in pics],
                        SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], [len(o.prompt_token_ids) for o in outs]


def prompt_len(image_tokens: int) -> int:
    return len(PROMPT.replace("<image>", "").split()) + 1 + image_tokens  # words + <s> + image tokens


@pytest.fixture(scope="module")
def pics():
    return images(3, seed=7)


def test_unpruned_vllm_equals_transformers(engine, hf, pics):
    tokens, lengths = served(engine(), pics)
    assert lengths == [prompt_len(N)] * len(pics)
    assert tokens == reference(hf, pics, None, None)[0]


@pytest.mark.parametrize("method", ["none", "full"])
def test_plugin_unpruned_equals_vllm(engine, hf, pics, method):
    tokens, lengths = served(engine(hf_overrides(method)), pics)
    assert lengths == [prompt_len(N)] * len(pics)
    assert tokens == reference(hf, pics, None, None)[0]


@pytest.mark.parametrize("method,keep", [("random", 16), ("visionzip", 16), ("vispruner", 16), ("random", N),
                                         ("prumerge", 16), ("flowcut", 16)])
def test_pruned_equals_vlprune_apply(engine, hf, pics, method, keep):
    llm = engine(hf_overrides(method, keep))
    tokens, lengths = served(llm, pics)
    assert lengths == [prompt_len(keep)] * len(pics)  # K placeholders per image reached the scheduler
    want_tokens, want_kept = reference(hf, pics, method, keep)
    assert tokens == want_tokens
    pixel_values = hf[1].image_processor(pics, return_tensors="pt")["pixel_values"]
    got_kept = llm.apply_model(lambda model: model.select(pixel_values).indices.cpu())[0]
    for got, want in zip(got_kept, want_kept):
        assert torch.equal(got, want)
    unpruned = reference(hf, pics, None, None)[0]
    if keep == N:  # the full budget keeps every patch, in raster order: the unpruned model's answer
        assert tokens == unpruned
    else:  # pruning reached the LLM: some answer changed
        assert tokens != unpruned


@pytest.mark.parametrize("settings,words", [
    ({"method": "random", "keep": N + 1}, f"choose 1 <= keep <= {N}"),
    ({"method": "fastv", "keep": 16}, "only encoder-side methods run in vLLM"),
])
def test_bad_settings_stop_the_engine_with_the_fix(engine, settings, words):
    overrides = {"architectures": ["VlpruneLlavaForConditionalGeneration"], "vlprune": settings}
    with pytest.raises(Exception) as info:
        engine(overrides)
    chain, e = [], info.value
    while e is not None:  # vLLM may wrap the plugin's error
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(words in m for m in chain), chain


def test_two_images_in_one_prompt(engine, hf):
    """Each image of a prompt is pruned on its own, in prompt order (vLLM encodes them as separate items)."""
    from vllm import SamplingParams

    prompt = PROMPT.replace("<image>", "<image> <image>")
    pairs = [images(2, seed=21), images(2, seed=22)]
    llm = engine(hf_overrides("visionzip", 16))
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": pair}} for pair in pairs],
                        SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True), use_tqdm=False)
    assert [len(o.prompt_token_ids) for o in outs] == [prompt_len(2 * 16)] * 2
    model, processor = hf
    vlprune.apply(model, "visionzip", 16)
    try:
        for pair, out in zip(pairs, outs):
            inputs = processor(text=prompt, images=pair, return_tensors="pt")
            want = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)[0, -MAX_NEW:].tolist()
            assert list(out.outputs[0].token_ids) == want
    finally:
        vlprune.remove(model)
