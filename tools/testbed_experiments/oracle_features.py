"""Oracle patch features for stage-2 experiments: per patch, a one-hot code of the covering object's colour,
shape and size plus an "is an object" bit, randomly projected to the vision width, + 0.1 Gaussian noise."""
import torch
from vlprune.testbed import boxes_to_patch_mask, scenes


def oracle_features(objects_per_sample, width: int, grid: int = 12, image_size: int = 96, seed: int = 0):
    """(n, grid*grid, width) features; one generator draws the projection first, then each sample's noise."""
    g = torch.Generator().manual_seed(seed)
    cols, shps, szs = list(scenes.COLORS), list(scenes.SHAPES), list(scenes.SIZES)
    proj = torch.randn(len(cols) + len(shps) + len(szs) + 1, width, generator=g)
    out = torch.empty(len(objects_per_sample), grid * grid, width)
    for i, objects in enumerate(objects_per_sample):
        code = torch.zeros(grid * grid, proj.shape[0])
        for o in objects:
            m = boxes_to_patch_mask([o.box], image_size, grid)
            for k in (cols.index(o.color), len(cols) + shps.index(o.shape),
                      len(cols) + len(shps) + szs.index(o.size), -1):
                code[m, k] = 1
        out[i] = code @ proj + 0.1 * torch.randn(grid * grid, width, generator=g)
    return out
