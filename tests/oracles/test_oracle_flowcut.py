"""vlprune's FlowCut against the authors' package (flowcut_official.py) on the same CLIP towers: kept patches and
features (1e-5), per image (the official batch path shares one adaptive count across the batch)."""
import pytest
import torch

from vlprune.methods import flowcut
from vlprune.models.clip_signals import ClipVisionSignals

from .flowcut_official import adaptive_prune_ratio, flowcut_llava_features
from .sources import TieWatch


def clip_tower(layers: int, side: int, seed: int, sharpen: float = 4.0):
    """A random CLIP vision tower (eager attention) with ``side x side`` patches of 4 pixels; q/k weights scaled by
    ``sharpen`` so its [CLS] attention is peaked enough for FlowCut's adaptive cuts to remove tokens (a random
    tower's near-uniform attention gives an entropy ratio of ~1, so every adaptive count would be 0)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           image_size=4 * side, patch_size=4, attn_implementation="eager")
    model = CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for block in model.encoder.layers:
            block.self_attn.q_proj.weight.mul_(sharpen)
            block.self_attn.k_proj.weight.mul_(sharpen)
    return model


class Recorder:
    """A FlowCut schedule that also records the rows kept after every pruning block."""

    def __init__(self, schedule):
        self.schedule, self.kept = schedule, []

    def __call__(self, i, block, hidden, out):
        rows = self.schedule(i, block, hidden, out)
        if rows is not None:
            self.kept.append((i, rows.shape[1]))
        return rows


# LLaVA-1.5-7B's depth (24 blocks, 576 patches) at 64; 128 / 192 on 12 blocks (cuts after blocks 1, 3, 5, 7, 9)
CASES = [(8, 12, keep) for keep in (4, 16, 48, 100)] + [(24, 24, 64), (12, 24, 128), (12, 24, 192)]


@torch.no_grad()
@pytest.mark.parametrize("layers,side,keep", CASES)
def test_kept_patches_and_features_equal_official(layers, side, keep):
    tower = clip_tower(layers, side, seed=layers + side)
    for seed in range(10):  # the official code orders with non-stable topk: redraw until it met no tie
        pixels = torch.randn(2, 3, 4 * side, 4 * side, generator=torch.Generator().manual_seed(100 * seed + keep))
        with TieWatch() as watch:
            want = [flowcut_llava_features(tower, pixels[i : i + 1], keep) for i in range(2)]
        if not watch.ties:
            break
    assert not watch.ties
    src = ClipVisionSignals(tower, pixels, -2, grid=(side, side))
    got = flowcut.select(src, keep, flowcut.FlowCutConfig())
    for i, (want_feats, want_kept) in enumerate(want):
        assert torch.equal(got.indices[i : i + 1], want_kept)
        torch.testing.assert_close(got.features[i : i + 1], want_feats, rtol=0, atol=1e-5)
    rec = Recorder(flowcut.FlowCutSchedule(keep + 1, src.f - 1, flowcut.FlowCutConfig()))
    src.prune_in_encoder(rec, slice(0, 1))
    # the schedule: adaptive cuts after blocks 1, 3, ... (those left with an even count), the last to keep + 1 rows
    # after block f - 2; LLaVA-1.5-7B's 24 blocks: 1, 3, ..., 21
    blocks = [i for i, _ in rec.kept]
    assert blocks[-1] == src.f - 2 and rec.kept[-1][1] == keep + 1
    assert all(b % 2 == (src.f - 2) % 2 for b in blocks)
    if side == 24:
        assert len(blocks) > 2 and any(keep + 1 < rows < side * side + 1 for _, rows in rec.kept[:-1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("remaining", [2, 8, 20])
def test_adaptive_count_equals_official(seed, remaining):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(3 * torch.randn(3, 200, generator=g), -1)
    assert flowcut.adaptive_prune_count(attn, remaining, 64) == adaptive_prune_ratio(attn, remaining, 64)
