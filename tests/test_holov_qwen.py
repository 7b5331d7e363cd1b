"""HoloV on Qwen2.5-VL (tiny random models): the family matrix of test_video.py on Qwen videos and mixed
image + video prompts, ragged image batches (images with fewer tokens than keep) and batches with HoloV's zero
tokens: batch == each sample alone, cached generate == the no-cache loop. Images at full budget, multi-image
prompts, beams, cached decoding and image batches run in test_families.py's matrix; the authors' code in
tests/oracles/test_oracle_holov_qwen.py."""
from __future__ import annotations

import pytest
import torch

import test_video
import vlprune
from test_ragged_batches import STEPS, _generate, assert_qwen_samples_equal_batch
from test_video import _one_thread  # noqa: F401  (its autouse fixture: one intra-op thread for tiny matmuls)


@pytest.fixture(scope="module")
def peaked():
    """A tiny Qwen2.5-VL whose last ViT block attends to a few keys (a large shared query bias): HoloV's crops
    overflow and it pads with zero tokens (as in test_oracle_holov_qwen.py)."""
    from vlprune.testing import tiny_qwen2_5_vl

    t = tiny_qwen2_5_vl(seed=1)
    with torch.no_grad():
        qkv = t.model.model.visual.blocks[-1].attn.qkv
        d = qkv.weight.shape[1]
        qkv.bias[:d] += 20 * torch.randn(d, generator=torch.Generator().manual_seed(0))
    return t


VIDEO_CHECKS = [test_video.test_identity_at_full_budget_and_exact_remove,
                test_video.test_cached_generate_equals_reference, test_video.test_batch_equals_per_sample,
                test_video.test_llm_receives_keep]


@pytest.mark.parametrize("check", VIDEO_CHECKS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_qwen_videos(qwen_t, check):
    """A video's temporal slices as one ranked sequence (the authors prune images only: vlprune's extension)."""
    vlprune.remove(qwen_t.model)
    try:
        check(("qwen-video", qwen_t), "holov")
    finally:
        vlprune.remove(qwen_t.model)


def test_qwen_mixed_image_and_video_prompts(qwen_t):
    test_video.test_mixed_image_and_video_prompts("qwen", "holov", None, qwen_t)


def _ragged(t, sizes, questions, keep, **options):
    m = t.model
    im = t.images(sizes)
    batch = {**t.prompt_ids(questions, im, [1] * len(sizes)), **im}
    vlprune.apply(m, "holov", keep, **options)
    try:
        gen = _generate(m, batch).sequences
        kept = vlprune.last_selection(m).indices
        assert_qwen_samples_equal_batch(t, batch, sizes, questions, gen, kept, STEPS)
        assert torch.equal(gen, test_video._greedy_no_cache(m, batch, STEPS))  # the whole pruned forward per step
        return kept
    finally:
        vlprune.remove(m)


@torch.no_grad()
def test_ragged_images(qwen_t):
    """16 and 6 merged tokens at keep 8: the second image keeps all its 6, the rows differ in length."""
    kept = _ragged(qwen_t, [(32, 32), (16, 24)], ["what color is the circle ?", "how many star are there ?"], 8)
    assert [len(k) for k in kept] == [8, 6] and torch.equal(kept[1], torch.arange(6))


@torch.no_grad()
@pytest.mark.parametrize("options", [{}, {"order": "raster", "attention_order": "raster"}])
def test_zero_tokens_in_a_batch(peaked, options):
    """The zero tokens (positions: the image's last token's) decode alike in a batch, alone and without a cache."""
    kept = _ragged(peaked, [(24, 40), (32, 32)], ["what color is the circle ?", "how many star ?"], 13, **options)
    if not options:  # the official pairing overflows one crop of the first image (test_oracle_holov_qwen.py)
        assert len(kept[0]) == 12


def test_config_and_crop_count():
    from vlprune.methods.holov import HoloVConfig, crops_for

    with pytest.raises(ValueError, match="attention_order must be"):
        HoloVConfig(attention_order="spatial")
    assert crops_for(576, 64, "qwen2_5_vl") == 16 and crops_for(576, 64, None) == 16  # the two rules meet here
    assert [crops_for(1024, k, "qwen2_5_vl") for k in (64, 128, 1024, 2000)] == [28, 14, 1, 1]
