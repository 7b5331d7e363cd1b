"""LLaVA-NeXT through vLLM equals ``model.generate()`` with ``vlprune.apply(..., budget=, newlines=)``: anyres tiles
of images of different sizes, placeholders counted from the size alone (newlines "all" / "none")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vlprune
from test_desap import QUESTIONS, prompt
from test_llava import MAX_NEW
from vlprune.vllm_plugin import hf_overrides, mm_processor_kwargs

SIZES = [(32, 64), (64, 32), (56, 40)]  # (height, width): 1x2, 2x1 and 2x2 tiles with unpadding


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory):
    from vlprune.vllm_plugin.checkpoints import save_tiny_llava_next

    return save_tiny_llava_next(tmp_path_factory.mktemp("tiny-next"))


@pytest.fixture(scope="module")
def next_clip(next_dir, tmp_path_factory):
    from vlprune.vllm_plugin.checkpoints import save_tiny_clip

    return save_tiny_clip(next_dir, tmp_path_factory.mktemp("tiny-next-clip"))


@pytest.fixture(scope="module")
def hf_next(next_dir):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(next_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model, AutoProcessor.from_pretrained(next_dir)


def pictures(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def reference(hf, clip, requests, budget: str = "global", newlines: str = "all") -> list[list[int]]:
    """transformers' greedy tokens, one request (question, image, method, keep) at a time."""
    model, processor = hf
    tokens = []
    for question, pic, method, keep in requests:
        inputs = processor(text=prompt(question), images=pic, return_tensors="pt")
        if method is not None:
            vlprune.apply(model, method, keep, processor=processor, clip=str(clip), budget=budget,
                          adapter_options={"newlines": newlines})
        try:
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        finally:
            if method is not None:
                vlprune.remove(model)
        tokens.append(out[0, -MAX_NEW:].tolist())
    return tokens


def served(llm, requests, per_request=False):
    from vllm import SamplingParams

    prompts = []
    for question, pic, method, keep in requests:
        p = {"prompt": prompt(question), "multi_modal_data": {"image": pic}}
        if per_request:
            p["mm_processor_kwargs"] = mm_processor_kwargs(method or "none", keep)
        prompts.append(p)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], [len(o.prompt_token_ids) for o in outs]


def test_next_global_all_desap_and_per_request(engine, hf_next, next_dir, next_clip):
    pics = pictures(51)
    requests = [(QUESTIONS[i % 2], pic, "desap", 40) for i, pic in enumerate(pics)]
    requests += [(QUESTIONS[2], pics[2], "vispruner", 24), (QUESTIONS[2], pics[0], None, None)]
    llm = engine(hf_overrides("desap", 40, family="llava_next", clip=str(next_clip), newlines="all"), next_dir)
    tokens, lengths = served(llm, requests, per_request=True)
    want = reference(hf_next, next_clip, requests, newlines="all")
    assert tokens == want
    unpruned = [len(hf_next[1](text=prompt(q), images=p)["input_ids"][0]) for q, p, *_ in requests]
    assert lengths[-1] == unpruned[-1]  # "none" per request: the model's own layout
    assert all(n < u for n, u in zip(lengths[:-1], unpruned[:-1]))


def test_next_tile_budget_without_newlines(engine, hf_next, next_dir, next_clip):
    pics = pictures(52)
    requests = [(QUESTIONS[0], pic, "visionzip", 20) for pic in pics]
    llm = engine(hf_overrides("visionzip", 20, family="llava_next", budget="tile", newlines="none"), next_dir)
    tokens, _ = served(llm, requests)
    want = reference(hf_next, next_clip, requests, budget="tile", newlines="none")
    assert tokens == want
