"""vlprune's VisionZip against the official selection + merge (visionzip_official.py) on the same tensors."""
import pytest
import torch

from vlprune.methods import visionzip

from .sources import TensorSource, run_tie_free
from .visionzip_official import visionzip_forward

CASES = [(n, keep, ratio) for n, budgets in ((36, (4, 9, 16, 24)), (144, (16, 32, 48, 64)), (576, (64, 128, 192)))
         for keep in budgets for ratio in (10 / 64, 0.3)]


def draw_layer(n: int, seed: int, batch: int = 2, heads: int = 2, dim: int = 16, key_dim: int = 12):
    """Layer -2 of a CLIP tower as plain tensors: attention (B, H, 1+N, 1+N), input (B, 1+N, C), keys (B, 1+N, Ck).
    Two heads: the official head sum and our head mean order alike (exact halving)."""
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(torch.randn(batch, heads, 1 + n, 1 + n, generator=g), dim=-1)
    return attn, torch.randn(batch, 1 + n, dim, generator=g), torch.randn(batch, 1 + n, key_dim, generator=g)


@pytest.mark.parametrize("n,keep,ratio", CASES)
def test_tokens_and_dominant_set_equal_official(n, keep, ratio):
    cfg = visionzip.VisionZipConfig(contextual_ratio=ratio)
    n_ctx = min(int(keep * ratio + 0.5), keep - 1)
    n_dom = keep - n_ctx - 1  # patches; [CLS] is the keep-th token, as official (dominant_num = dominant - 1)
    if n_ctx == 0 or n_dom < 1:
        pytest.skip("the official code needs contextual >= 1 and dominant >= 1")
    (attn, hidden, metric, *_), (want_tokens, want_idx) = run_tie_free(
        lambda seed: (*draw_layer(n, 100 * n + keep + seed), n_dom, n_ctx), visionzip_forward)
    src = TensorSource(hidden[:, 1:], attn[:, :, 0, 1:].mean(dim=1), keys=metric[:, 1:], cls_feature=hidden[:, 0])
    got = visionzip.select(src, keep, cfg)
    assert torch.equal(got.indices[:, :n_dom], torch.sort(want_idx[:, 1:] - 1, dim=-1).values)
    torch.testing.assert_close(got.features, want_tokens, rtol=0, atol=1e-5)
