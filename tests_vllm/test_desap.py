"""DeSAP and per-request settings through vLLM equal ``model.generate()`` with ``vlprune.apply``: the question
reaches the encoder, and an image's cache key holds its question and settings (same image, other question or
budget, other answer)."""
from __future__ import annotations

import pytest
import torch

from test_llava import MAX_NEW, N
from tiny import PROMPT, generate, images
from vlprune.vllm_plugin import hf_overrides, mm_processor_kwargs

QUESTIONS = ["what color is the circle ?", "how many red square are there ?", "is the star left of the triangle ?"]


def prompt(question: str) -> str:
    return PROMPT.replace("what color is the circle ?", question)


def reference(hf, clip_dir, requests: list[tuple[str, object, str | None, int | None]], **apply_kw):
    """transformers' greedy tokens and kept patches, one request (question, image, method, keep) at a time."""
    tokens, kept = [], []
    for question, pic, method, keep in requests:
        t, k = generate(*hf, prompt(question), pic, method, keep, MAX_NEW, clip=str(clip_dir), **apply_kw)
        tokens.append(t)
        kept.append(k)
    return tokens, kept


def serve(llm, requests, per_request: bool = False):
    from vllm import SamplingParams

    prompts = []
    for question, pic, method, keep in requests:
        p = {"prompt": prompt(question), "multi_modal_data": {"image": pic}}
        if per_request:
            p["mm_processor_kwargs"] = mm_processor_kwargs(method or "none", keep)
        prompts.append(p)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], [len(o.prompt_token_ids) for o in outs]


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model, AutoProcessor.from_pretrained(model_dir)


def length(question: str, image_tokens: int) -> int:
    return len(prompt(question).replace("<image>", "").split()) + 1 + image_tokens  # words + <s> + image


def kept_in_vllm(llm, hf, requests, questions):
    """The patches the served model keeps for each request's image, from its own ``select``."""
    pv = hf[1].image_processor([pic for _, pic, *_ in requests], return_tensors="pt")["pixel_values"]
    method, keep = requests[0][2], requests[0][3]
    from vlprune.vllm_plugin.settings import PruneSettings

    def run(model):
        settings = PruneSettings(method, keep, {}, model.prune.clip)
        return model.select(pv, settings, questions).indices.cpu()

    return llm.apply_model(run)[0]


def test_desap_equals_vlprune_apply(engine, hf, clip_dir):
    """One batch: two images, each asked two questions (the same pixels with another question must not share a
    cache entry), and a prompt without a question (DeSAP falls back to the [CLS] cue)."""
    pics = images(2, seed=31)
    requests = [(q, pic, "desap", 16) for pic in pics for q in QUESTIONS[:2]] + [("", pics[0], "desap", 16)]
    llm = engine(hf_overrides("desap", 16, clip=str(clip_dir)))
    tokens, lengths = serve(llm, requests)
    assert lengths == [length(q, 16) for q, *_ in requests]
    want_tokens, want_kept = reference(hf, clip_dir, requests)
    assert tokens == want_tokens
    got_kept = kept_in_vllm(llm, hf, requests, [q for q, *_ in requests])
    for got, want in zip(got_kept, want_kept):
        assert torch.equal(got, want)
    assert not torch.equal(want_kept[0], want_kept[1])  # the question changed the kept patches
    assert not torch.equal(want_kept[0], want_kept[4])  # and no question is not the same as a question


def test_per_request_settings_equal_vlprune_apply(engine, hf, clip_dir):
    """One engine (deployment: visionzip 16), one batch, a method and budget per request via mm_processor_kwargs
    (the same image under two settings included); prompts carry each request's own number of image tokens."""
    pics = images(3, seed=41)
    requests = [(QUESTIONS[0], pics[0], "random", 8), (QUESTIONS[0], pics[0], "desap", 12),
                (QUESTIONS[1], pics[1], "vispruner", 20), (QUESTIONS[2], pics[2], None, None),
                (QUESTIONS[2], pics[2], "visionzip", 16)]
    llm = engine(hf_overrides("visionzip", 16, clip=str(clip_dir)))
    tokens, lengths = serve(llm, requests, per_request=True)
    assert lengths == [length(q, keep or N) for q, _, _, keep in requests]
    assert tokens == reference(hf, clip_dir, requests)[0]
    default, _ = serve(llm, requests[4:])  # no mm_processor_kwargs: the deployment's settings
    assert default == tokens[4:]


@pytest.mark.parametrize("raw,words", [
    ({"method": "random", "keep": N + 1}, f"choose 1 <= keep <= {N}"),
    ({"method": "fastv", "keep": 8}, "only encoder-side methods run in vLLM"),
    ({"method": "random", "keep": 8, "clip": "x"}, "allowed: method, keep, options"),
])
def test_bad_request_settings_name_the_fix(engine, clip_dir, raw, words):
    from vllm import SamplingParams

    llm = engine(hf_overrides("visionzip", 16, clip=str(clip_dir)))
    with pytest.raises(Exception) as info:
        llm.generate([{"prompt": PROMPT, "multi_modal_data": {"image": images(1)[0]},
                       "mm_processor_kwargs": {"vlprune": raw}}], SamplingParams(max_tokens=2), use_tqdm=False)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(words in m for m in chain), chain


def test_desap_without_clip_is_refused_at_start(engine):
    with pytest.raises(Exception) as info:
        engine({"architectures": ["VlpruneLlavaForConditionalGeneration"], "vlprune": {"method": "desap", "keep": 8}})
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any('"clip"' in m for m in chain), chain
