"""vlprune's VisPruner against the official selection (vispruner_official.py) on the same tie-free tensors."""
import pytest
import torch

from vlprune.methods import vispruner

from .vispruner_official import encode_images
from .sources import TensorSource, draw, run_tie_free

RATIOS = (0.25, 0.5, 0.75)
CASES = [(n, t, r) for n, budgets in ((36, (4, 9, 12, 16, 18)), (144, (8, 16, 32, 48, 64)),
                                      (576, (32, 64, 128, 192))) for t in budgets for r in RATIOS]


def official_rounds_defined(n: int, t: int, ratio: float, per_round: int = 8) -> bool:
    """Whether every round of the official loop indexes as written: an even list, or an odd one whose a/b index
    broadcast is harmless. False where it raises or where a (B, 0) index broadcast against (B, 1) silently
    drops every ``a`` token of a round (docs/methods/vispruner.md)."""
    imp = int(t * ratio)
    rest, target = n - imp, t - imp
    while target > 0 and rest > target:
        r = min(per_round, rest - target)
        half, n_a = rest // 2, (rest + 1) // 2
        # the a-side index: (B, half - r) broadcast against the (B, max(n_a - r, 0)) survivors; expand(-1, -1)
        # keeps size 1, smaller sizes raise
        if half - r < -1 or (half - r >= 0 and half != n_a and half - r != 1):
            return False
        rest = max(n_a - r, 0) + half
    return True


@pytest.mark.parametrize("n,t,ratio", CASES)
def test_kept_set_equals_official(n, t, ratio):
    if not official_rounds_defined(n, t, ratio):
        pytest.skip("the official loop is undefined here (the extension applies; see the extension test)")
    (feats, attn, *_), want = run_tie_free(
        lambda seed: (*draw(n, seed=1000 * n + 10 * t + seed, heads=3, batch=1 if n > 144 else 2), t, ratio),
        encode_images)  # one image at N=576: its ~70 rounds meet a tie in about every other draw of two
    got = vispruner.select(TensorSource(feats, attn.mean(dim=1)), t, vispruner.VisPrunerConfig(ratio))
    for row in range(feats.shape[0]):  # want: (B, N) bool index masks
        assert got.indices[row].tolist() == torch.nonzero(want[row]).flatten().tolist()
    torch.testing.assert_close(got.features, feats[torch.arange(feats.shape[0]).unsqueeze(-1), got.indices])


def test_official_loop_breaks_where_the_extension_applies():
    """Where the official loop raises, vlprune still returns T distinct tokens (its extension)."""
    broken = [(n, t, r) for n, t, r in CASES if not official_rounds_defined(n, t, r)]
    assert broken, "the cases should cover the official code's undefined configurations"
    raised = 0
    for n, t, ratio in broken:
        feats, attn = draw(n, seed=1, heads=2)
        try:
            encode_images(feats, attn, t, ratio)
        except (RuntimeError, IndexError):
            raised += 1
        got = vispruner.select(TensorSource(feats, attn.mean(dim=1)), t, vispruner.VisPrunerConfig(ratio))
        assert all(len(set(row.tolist())) == t for row in got.indices)
    assert raised >= 1


def test_undefined_configurations_are_the_documented_ones():
    """The helper's classification agrees with running the official code: it raises or keeps != T tokens
    exactly where the helper says the loop is undefined, apart from N=36, T=26, r=0.75 (documented)."""
    for n in (36, 144):
        for t in range(1, n):
            for ratio in RATIOS:
                feats, attn = draw(n, seed=t, heads=1, batch=1)
                try:
                    kept = int(encode_images(feats, attn, t, ratio).sum())
                except (RuntimeError, IndexError):
                    kept = None
                defined = official_rounds_defined(n, t, ratio)
                if (n, t, ratio) == (36, 26, 0.75):
                    assert not defined and kept == t  # runs, through the broadcast accident, to T tokens
                else:
                    assert defined == (kept == t), (n, t, ratio, kept)
