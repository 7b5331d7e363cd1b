"""LLaVA-NeXT through vLLM equals ``model.generate()`` with ``vlprune.apply(..., budget=, newlines=)``: anyres tiles
of images of different sizes, placeholders counted from the size alone (newlines "all" / "none")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from test_desap import QUESTIONS, prompt, reference, serve
from vlprune.vllm_plugin import hf_overrides

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


def test_next_global_all_desap_and_per_request(engine, hf_next, next_dir, next_clip):
    pics = pictures(51)
    requests = [(QUESTIONS[i % 2], pic, "desap", 40) for i, pic in enumerate(pics)]
    requests += [(QUESTIONS[2], pics[2], "vispruner", 24), (QUESTIONS[2], pics[0], None, None)]
    llm = engine(hf_overrides("desap", 40, family="llava_next", clip=str(next_clip), newlines="all"), next_dir)
    tokens, lengths = serve(llm, requests, per_request=True)
    want = reference(hf_next, next_clip, requests, adapter_options={"newlines": "all"})[0]
    assert tokens == want
    unpruned = [len(hf_next[1](text=prompt(q), images=p)["input_ids"][0]) for q, p, *_ in requests]
    assert lengths[-1] == unpruned[-1]  # "none" per request: the model's own layout
    assert all(n < u for n, u in zip(lengths[:-1], unpruned[:-1]))


def test_next_tile_budget_without_newlines(engine, hf_next, next_dir, next_clip):
    pics = pictures(52)
    requests = [(QUESTIONS[0], pic, "visionzip", 20) for pic in pics]
    llm = engine(hf_overrides("visionzip", 20, family="llava_next", budget="tile", newlines="none"), next_dir)
    tokens, _ = serve(llm, requests)
    want = reference(hf_next, next_clip, requests, budget="tile", adapter_options={"newlines": "none"})[0]
    assert tokens == want
