"""vlprune's HoloV on a tiny eager Qwen2.5-VL against the authors' Qwen path (holov_qwen_official.py): their vision
tower's scores, their pruning block's LLM input (every token, zero tokens included) and its M-RoPE positions."""
from types import SimpleNamespace

import pytest
import torch

import vlprune
from test_families import _llm_kwargs  # keyword arguments of the language model's first call
from vlprune.methods.holov import crops_for

from . import holov_qwen_official as official

# (height, width) with patch 4: merged grids 4x4, 3x5, 5x3, 6x4 -> N = 16, 15, 15, 24 tokens; windows of 2x2 tokens
SIZES = [(32, 32), (24, 40), (40, 24), (48, 32)]
KEEPS = [3, 6, 11]


@pytest.fixture(scope="module")
def t():
    from vlprune.testing import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(seed=1, attn="eager")


@pytest.fixture(scope="module")
def peaked():
    """[test] the same tiny model with a large shared query bias in the last block: every patch attends to the same
    few keys, so one crop takes most of the budget and overflows (zero tokens)."""
    from vlprune.testing import tiny_qwen2_5_vl

    t = tiny_qwen2_5_vl(seed=1, attn="eager")
    with torch.no_grad():
        qkv = t.model.model.visual.blocks[-1].attn.qkv
        d = qkv.weight.shape[1]
        qkv.bias[:d] += 20 * torch.randn(d, generator=torch.Generator().manual_seed(0))
    return t


def _llm_input(m, inputs):
    """(inputs_embeds (1, L, D), position_ids (3, 1, L)) the language model receives."""
    embeds, pos = _llm_kwargs(m, inputs, "inputs_embeds", "position_ids")
    return embeds, pos[-3:]


def run_official(t, inputs, keep, raster_scores=False):
    """The authors' path on one image: their tower, the image's embeddings scattered into the prompt, the unpruned
    M-RoPE positions, their pruning block. Returns (inputs_embeds, position_ids, final kept positions, scores)."""
    m = t.model
    ids, thw = inputs["input_ids"], inputs["image_grid_thw"]
    tower = official.VisionTower(m.model.visual)
    embeds, attn = tower(inputs["pixel_values"], grid_thw=thw)
    torch.testing.assert_close(embeds, m.model.visual(inputs["pixel_values"], grid_thw=thw).pooler_output,
                               rtol=0, atol=1e-5)  # their tower computes the model's own merger output
    if raster_scores:  # each token its own score (vlprune's attention_order="raster")
        attn = attn[torch.argsort(tower.get_window_index(thw)[0])]
    _, pos = _llm_input(m, inputs)  # the unpatched model: positions of the unpruned prompt
    text = m.model.get_input_embeddings()(ids)
    image = (ids == m.config.image_token_id).unsqueeze(-1).expand_as(text)
    inputs_embeds = text.masked_scatter(image, embeds.to(text.dtype))
    n = embeds.shape[0]
    # the authors' line 1822 points at <|vision_start|>, one before the first image token (docs/methods/holov.md):
    # the window here is the image's own N tokens
    start = torch.where(ids[0] == m.config.vision_start_token_id)[0] + 1
    seen = {}

    def holov(image_tokens, attention, num_patches, new_image_token_num):
        seen["num_patches"] = num_patches
        out, final = official_holov(image_tokens, attention, num_patches, new_image_token_num)
        seen["final"] = final
        return out, final

    official_holov, official.HoloV = official.HoloV, holov
    try:
        cfg = SimpleNamespace(prune_rate=(keep + 0.5) / n, prune_method="HoloV")  # int(n * rate) == keep
        h, _, p = official.prune(SimpleNamespace(config=cfg), inputs["pixel_values"], inputs_embeds, ids, pos,
                                 start, n, attn)
    finally:
        official.HoloV = official_holov
    assert seen["num_patches"] == crops_for(n, keep, "qwen2_5_vl")
    return h, p, seen["final"], attn


def _inputs(t, size, seed):
    im = t.images([size], seed=seed)
    return {**t.prompt_ids(["what is it ?"], im, [1]), **im}


def _vlprune(t, inputs, keep, **options):
    m = t.model
    vlprune.apply(m, "holov", keep, **options)
    try:
        h, pos = _llm_input(m, inputs)
        kept = vlprune.last_selection(m).indices[0].cpu()
    finally:
        vlprune.remove(m)
    return h, pos, kept


@torch.no_grad()
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("keep", KEEPS)
def test_tiny_qwen_equals_official(t, size, keep):
    inputs = _inputs(t, size, seed=keep)
    want_h, want_pos, final, _ = run_official(t, inputs, keep)
    h, pos, kept = _vlprune(t, inputs, keep)
    assert torch.equal(kept, final[final >= 0])  # the same tokens, in the authors' order (crop by crop)
    assert h.shape == want_h.shape
    torch.testing.assert_close(h, want_h, rtol=0, atol=1e-5)
    assert torch.equal(pos, want_pos)


@torch.no_grad()
@pytest.mark.parametrize("size", [SIZES[1], SIZES[2]])
def test_zero_tokens_and_raster_scores_equal_official(peaked, size):
    """Peaked attention: crops overflow and the authors pad with zero tokens at the position of the image's last
    token (``adjust_ids`` index -1); ``attention_order="raster"`` equals the authors' path fed raster-order scores
    and differs from the official pairing on these multi-window images."""
    keep = 13
    inputs = _inputs(peaked, size, seed=0)
    want_h, want_pos, final, _ = run_official(peaked, inputs, keep)
    h, pos, kept = _vlprune(peaked, inputs, keep)
    assert int((final < 0).sum()) == 1  # one zero token
    torch.testing.assert_close(h, want_h, rtol=0, atol=1e-5)
    assert torch.equal(pos, want_pos) and torch.equal(kept, final[final >= 0])
    raster_h, raster_pos, raster_final, _ = run_official(peaked, inputs, keep, raster_scores=True)
    h, pos, kept = _vlprune(peaked, inputs, keep, attention_order="raster")
    torch.testing.assert_close(h, raster_h, rtol=0, atol=1e-5)
    assert torch.equal(pos, raster_pos) and torch.equal(kept, raster_final[raster_final >= 0])
    assert not torch.equal(final, raster_final)  # the authors' window-order pairing changes the choice


@torch.no_grad()
def test_scores_are_the_authors_tower_scores(t):
    """vlprune's received attention of the last block (summed over each 2x2 unit, raster order) is 4x the authors'
    per-unit mean, which their tower leaves in window order."""
    from vlprune.models.qwen2_5_vl import _QwenImage, _VisionPass

    m = t.model
    inputs = _inputs(t, SIZES[3], seed=0)
    _, _, _, attn = run_official(t, inputs, 6)
    vit = _VisionPass(m.model.visual, inputs["pixel_values"], inputs["image_grid_thw"], -1)
    src = _QwenImage(vit, 0, None)
    window = src.window_order()
    assert not torch.equal(window, torch.arange(window.numel()))  # several windows
    torch.testing.assert_close(src.cls_attention()[0][window] / 4, attn.float(), rtol=1e-5, atol=1e-7)
