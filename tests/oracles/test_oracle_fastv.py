"""vlprune's FastV against the official selection (fastv_official.py) on the same tiny-LLaVA attention."""
import pytest
import torch

import vlprune

from .fastv_official import fastv_keep_indexs
from .sources import run_tie_free

CASES = [(grid, keep, k) for grid, budgets in ((6, (4, 9, 18)), (12, (16, 36, 72)), (24, (64, 144, 288)))
         for keep in budgets for k in (1, 2)]


@pytest.fixture(scope="module")
def models():
    from vlprune.testing import tiny_llava

    return {grid: tiny_llava(seed=grid, grid=grid, layers=3, attn="eager") for grid in (6, 12, 24)}


@pytest.mark.parametrize("grid,keep,k", CASES)
def test_kept_patches_equal_official(models, grid, keep, k):
    tiny = models[grid]
    n = grid * grid
    inputs = tiny.prompt_ids(["what color is the circle ?"])
    ids = inputs["input_ids"][0]
    sys_length = int((ids == 4).nonzero()[0])

    def draw(seed):  # the pixels and layer K-1's attention probabilities of the unpatched (eager) model
        pixels = torch.randn(1, 3, 4 * grid, 4 * grid, generator=torch.Generator().manual_seed(1000 * keep + seed))
        with torch.no_grad():
            return pixels, tiny.model(**inputs, pixel_values=pixels, output_attentions=True).attentions[k - 1]

    (pixels, _), want = run_tie_free(
        draw, lambda _, probs: fastv_keep_indexs((None, probs), sys_length, n, keep, ids.shape[0], ids.device))
    want_patches = [int(p) - sys_length for p in want if sys_length <= p < sys_length + n]
    vlprune.apply(tiny.model, "fastv", keep, layer=k)
    try:
        with torch.no_grad():
            tiny.model(**inputs, pixel_values=pixels)
        got = vlprune.last_selection(tiny.model).indices[0]
    finally:
        vlprune.remove(tiny.model)
    assert sorted(got.tolist()) == want_patches
