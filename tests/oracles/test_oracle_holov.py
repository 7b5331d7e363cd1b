"""vlprune's HoloV against the official ``HoloV`` (holov_official.py) on the same tensors: every output token."""
import pytest
import torch

from vlprune.methods import holov

from .holov_official import HoloV as official
from .sources import run_tie_free

CASES = [(n, keep) for n, budgets in ((36, (4, 9, 20)), (144, (16, 48, 100)), (576, (64, 128, 192))) for keep in budgets]


class Source:
    """What HoloV reads: the projected patch tokens and the feature layer's head-mean [CLS] attention."""

    def __init__(self, tokens, attention):
        self._t, self._a = tokens, attention

    def projected_features(self):
        return self._t

    def cls_attention(self):
        return self._a


def draw(n: int, seed: int, scale: float, batch: int = 2, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, dim, generator=g), torch.softmax(scale * torch.randn(batch, n, generator=g), -1)


@pytest.mark.parametrize("n,keep", CASES)
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_tokens_equal_official(n, keep, scale):
    """scale 6: peaked attention, so some crops get more than their size (the official zero padding)."""
    (tokens, attn), want = run_tie_free(lambda s: draw(n, 100 * n + keep + s, scale), lambda t, a: official(t, a, 16, keep))
    got = holov.select(Source(tokens, attn), keep, holov.HoloVConfig())
    assert got.projected and got.features.shape == want.shape
    torch.testing.assert_close(got.features, want, rtol=0, atol=1e-5)
    for i, index in enumerate(got.indices):  # the indexed rows are those patches; the rest are the zero rows
        torch.testing.assert_close(want[i, : index.numel()], tokens[i, index], rtol=0, atol=1e-5)
        assert not want[i, index.numel():].any()


def test_official_pads_with_zero_tokens_where_a_crop_overflows():
    """The case the padding tests above must cover: a crop whose share exceeds its size (surplus lost)."""
    tokens, attn = draw(144, 0, 1.0, batch=1)
    attn = torch.full_like(attn, 1e-4)
    attn[0, :9] = 1.0  # crop 0 (9 tokens) dominates
    attn = attn / attn.sum()
    want = official(tokens, attn, 16, 48)
    got = holov.select(Source(tokens, attn), 48, holov.HoloVConfig())
    assert got.indices[0].numel() < 48 and not want[0, -1].any()
    torch.testing.assert_close(got.features, want, rtol=0, atol=1e-5)
    refill = holov.select(Source(tokens, attn), 48, holov.HoloVConfig(overflow="refill"))
    assert refill.indices[0].unique().numel() == 48 and refill.features.abs().sum(-1).gt(0).all()


@torch.no_grad()
@pytest.mark.parametrize("keep", [8, 24, 60])
def test_tiny_llava_signals_equal_official(keep):
    """On a tiny LLaVA-1.5 (12 x 12 patches): the official inputs are the projected ``hidden_states[-2]`` patches and
    the eager ``attentions[-2]`` [CLS] row (head mean); vlprune's source recomputes the attention."""
    from vlprune.models.clip_signals import ClipVisionSignals
    from vlprune.testing import tiny_llava

    t = tiny_llava(seed=1, grid=12, attn="eager")
    tower, proj = t.model.model.vision_tower, t.model.model.multi_modal_projector
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    out = tower(pixels, output_hidden_states=True, output_attentions=True)
    feats = proj(out.hidden_states[-2][:, 1:])
    attn = out.attentions[-2][:, :, 0, 1:].mean(dim=1).float()
    want = official(feats, attn, 16, keep)
    src = ClipVisionSignals(tower, pixels, -2,
                            grid=(12, 12), projector=proj)
    got = holov.select(src, keep, holov.HoloVConfig())
    torch.testing.assert_close(got.features, want, rtol=0, atol=1e-5)
