"""vlprune's PruMerge / PruMerge+ against the official selection + merge (prumerge_official.py) on the same tensors."""
import pytest
import torch
import torch.nn.functional as F

from vlprune.methods import prumerge

from .prumerge_official import outlier_dectection, prumerge as official, prumerge_plus as official_plus
from .sources import TensorSource, run_tie_free

CASES = [(n, keep) for n, budgets in ((36, (2, 9, 16)), (144, (16, 48)), (576, (64, 192))) for keep in budgets]


def draw_layer(n: int, seed: int, batch: int = 2, dim: int = 16, scale: float = 1.0):
    """Layer 23's q_proj / k_proj outputs (B, 1+N, C) and the patch features (B, N, C), as the official code reads."""
    g = torch.Generator().manual_seed(seed)
    q, k = (scale * torch.randn(batch, 1 + n, dim, generator=g) for _ in range(2))
    return q, k, torch.randn(batch, n, dim, generator=g)


def source(q, k, feats):
    """The official [CLS] attention (one softmax over the full width, scaled by C^-1/2) and layer 23's keys."""
    attn = F.softmax((q @ k.transpose(-2, -1)) * feats.shape[-1] ** -0.5, dim=-1)[:, 0, 1:]
    return TensorSource(feats, attn, keys=k[:, 1:])


def check(got: prumerge.Selection, want: torch.Tensor, kept: torch.Tensor) -> None:
    """vlprune: [extra, kept...] in official order; official: [kept..., extra]."""
    assert torch.equal(got.indices, kept)
    torch.testing.assert_close(got.features[:, 1:], want[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.features[:, 0], want[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("n,keep", CASES)
def test_fixed_budget_equals_official_non_adaptive(n, keep):
    """The official ``if_adaptive=False`` path keeps ``int(N * reduction_ratio)`` patches: that ratio at keep - 1."""
    ratio = (keep - 1 + 0.5) / n
    (q, k, feats), want = run_tie_free(
        lambda seed: draw_layer(n, 10 * n + keep + seed), lambda *t: official(*t, if_adaptive=False, reduction_ratio=ratio))
    src = source(q, k, feats)
    got = prumerge.select(src, keep, prumerge.PruMergeConfig(order="attention"))
    assert want.shape[1] == keep
    check(got, want, torch.topk(src.last_cls_attention(), keep - 1, dim=1).indices)
    raster = prumerge.select(src, keep, prumerge.PruMergeConfig())  # the default: the same tokens in raster order
    order = torch.sort(got.indices, dim=1).indices
    assert torch.equal(raster.indices, torch.gather(got.indices, 1, order))
    torch.testing.assert_close(raster.features[:, 1:], got.features[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, 16)))


@pytest.mark.parametrize("n", [36, 144, 576])
@pytest.mark.parametrize("plus", [False, True])
def test_adaptive_choice_and_merge_equal_official(n, plus):
    """One image (the official IQR pools the batch): the adaptive count, the kept list and every token. The official
    PruMerge+ strides range(0, 575): N = 576 only."""
    if plus and n != 576:
        pytest.skip("the official PruMerge+ sampling is written for N = 576")
    fn = (lambda *t: official_plus(*t, device="cpu")) if plus else official
    (q, k, feats), want = run_tie_free(lambda seed: draw_layer(n, 7 * n + seed, batch=1, scale=2.0), fn)
    src = source(q, k, feats)
    ratio = outlier_dectection(src.last_cls_attention())
    assert prumerge.outlier_count(src.last_cls_attention()) == [round(ratio * n)]
    (kept,) = prumerge.adaptive_kept(src.last_cls_attention(), plus=plus)
    assert 0 < int(n * ratio) < kept.shape[0] + 1 and want.shape[1] == kept.shape[0] + 1
    tokens, extra = prumerge.cluster_merge(feats, src.keys(), src.last_cls_attention(), kept[None], 32)
    torch.testing.assert_close(tokens, want[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(extra, want[:, -1], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny36():
    """A tiny LLaVA-1.5 with 6x6 = 36 patches: the official merge takes 32 neighbours, so it needs N > 32."""
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=6, layers=3)


@torch.no_grad()
@pytest.mark.parametrize("keep", [2, 9, 20])
def test_tiny_llava_end_to_end_equals_official(tiny36, keep):
    """On a tiny LLaVA-1.5: the official code's own signals (hooks on the last block's q_proj / k_proj, features
    hidden_states[-2] without [CLS]) through the official function, against what vlprune.apply hands the projector
    (its signals: ClipVisionSignals.last_block_full_width) and the patches it reports kept."""
    import vlprune
    from vlprune.models.clip_signals import ClipVisionSignals

    tiny = tiny36
    pixels = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(keep))
    model = tiny.model
    tower = model.model.vision_tower
    out = {}
    block = tower.encoder.layers[-1].self_attn  # as ClipVisionSignals reads the tower
    hooks = [block.q_proj.register_forward_hook(lambda m, i, o: out.__setitem__("q", o)),
             block.k_proj.register_forward_hook(lambda m, i, o: out.__setitem__("k", o))]
    try:
        feats = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    finally:
        for h in hooks:
            h.remove()
    assert model.config.vision_feature_layer == -2
    n = feats.shape[1]
    want = official(out["q"], out["k"], feats, if_adaptive=False, reduction_ratio=(keep - 1 + 0.5) / n)
    src = ClipVisionSignals(tower, pixels, -2)
    cfg = prumerge.PruMergeConfig(order="attention")
    got = prumerge.select(src, keep, cfg)
    attn = F.softmax((out["q"] @ out["k"].transpose(-2, -1)) * feats.shape[-1] ** -0.5, dim=-1)[:, 0, 1:]
    check(got, want, torch.topk(attn, keep - 1, dim=1).indices)
    vlprune.apply(model, "prumerge", keep, order="attention")
    try:
        model(**tiny.prompt_ids(["what is it?"] * pixels.shape[0]), pixel_values=pixels)
        assert all(torch.equal(i.cpu(), g) for i, g in zip(vlprune.last_selection(model).indices, got.indices))
    finally:
        vlprune.remove(model)
