"""vlprune's HiRED against the official budget split and per-tile selection (hired_official.py), same tensors."""
import pytest
import torch

from vlprune.methods import hired

from .hired_official import HiRED
from .sources import run_tie_free

# (tiles of the grid: height, width) as LLaVA-NeXT's pinpoints give them; S = 36 / 144 / 576 patches per tile
GRIDS = [(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)]
CASES = [(s, grid, keep) for s, budgets in ((36, (8, 30)), (144, (40, 160)), (576, (80, 160, 320, 640)))
         for grid in GRIDS for keep in budgets]


def draw(s: int, tiles: int, seed: int, heads: int = 2):
    """Per-head softmax attention of layers 0 and 22 for every tile, (tiles, H, 1+S, 1+S) (only row 0 is read)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.softmax(torch.randn(tiles, heads, 1 + s, 1 + s, generator=g), -1) for _ in range(2))


@pytest.mark.parametrize("alpha", [0.5, 0.3])
@pytest.mark.parametrize("s,grid,keep", CASES)
def test_kept_masks_equal_official(s, grid, keep, alpha):
    tiles = 1 + grid[0] * grid[1]
    rate = (keep + 0.5) / (tiles * s)  # the official budget is int(tiles * S * rate): keep
    official = HiRED()
    (top, bottom), (want,) = run_tie_free(
        lambda seed: draw(s, tiles, 1000 * s + keep + seed),
        lambda top, bottom: official.HiRED_token_selection(top, bottom, [tiles], 0, s, rate, alpha, [grid]))
    got = hired.select_tiles(top[0, :, 0, 1:].mean(0), bottom[:, :, 0, 1:].mean(1), keep, alpha)
    assert torch.equal(got, want)
    assert 0 < int(got.sum()) <= keep
