"""vlprune's HoloV on a tiny LLaVA-NeXT against the authors' LLaVA-NeXT path (holov_next_official.py): the
sequence it prunes (base tile + unpadded grid, no newlines), the patches it keeps and every token the LLM gets."""
from types import SimpleNamespace

import pytest
import torch

import vlprune
from test_families import _llm_input  # (inputs_embeds, mask) the language model receives

from . import holov_next_official as next_official
from .holov_official import HoloV as official

SIDE, PATCH = 6, 4  # 6 x 6 patches per tile


@pytest.fixture(scope="module")
def t():
    from vlprune.testing import tiny_llava_next

    return tiny_llava_next(seed=1, side=SIDE, patch=PATCH, attn="eager")


class Tower:
    """[test] the official ``CLIPVisionTower``: ``feature_select`` of ``hidden_states[-2]`` and ``attentions[-2]``."""

    def __init__(self, tower):
        self.tower, self.num_patches_per_side = tower, SIDE
        self.config = SimpleNamespace(image_size=SIDE * PATCH)

    def __call__(self, images):
        out = self.tower(images, output_hidden_states=True, output_attentions=True)
        return out.hidden_states[-2][:, 1:], out.attentions[-2][:, :, 0, 1:]


def run_official(t, pixels, size, keep):
    """The official path on one image of HF size (height, width); returns (sequence, attention, output tokens)."""
    m, seen = t.model, {}

    def holov(feats, attn, num_patches, new_image_token_num):
        assert num_patches == 16 and new_image_token_num == 64  # the official call (llava_arch.py line 239)
        seen.update(feats=feats, attn=attn)
        return official(feats, attn, num_patches, keep)

    cfg = SimpleNamespace(mm_patch_merge_type="spatial_unpad", image_aspect_ratio="anyres",
                          image_grid_pinpoints=[[w, h] for h, w in m.config.image_grid_pinpoints])
    arch = next_official.HoloVLlava(Tower(m.model.vision_tower), m.model.multi_modal_projector, cfg)
    saved, next_official.HoloV = next_official.HoloV, holov  # the budget: the official file hard-codes 64
    try:
        out = arch.prepare_inputs_labels_for_multimodal(torch.ones(1, 2, dtype=torch.long), None, None, None, None,
                                                        [pixels], image_sizes=[(size[1], size[0])])
    finally:
        next_official.HoloV = saved
    return seen["feats"][0], seen["attn"][0], out[0]


@torch.no_grad()
@pytest.mark.parametrize("size", [(40, 72), (80, 32), (60, 60), (66, 34)])
@pytest.mark.parametrize("keep", [10, 30, 64, 80])
def test_tiny_llava_next_equals_official(t, size, keep):
    from vlprune.models import get_adapter

    m = t.model
    images = t.images([size], seed=keep)
    lay = get_adapter(m).layout(size)
    seq, _, want = run_official(t, images["pixel_values"][0, : lay.n_tiles], size, keep)
    assert seq.shape[0] == lay.tile.shape[0]  # same unpadded grid: base + Hu x Wu patches
    inputs = {**t.prompt_ids(["what is it ?"], images, [1]), **images}
    vlprune.apply(m, "holov", keep, adapter_options={"newlines": "none"})  # the official layout has no image_newline
    try:
        h, _ = _llm_input(m, inputs)
    finally:
        vlprune.remove(m)
    # the official output tokens by sequence position (rows of the official sequence), then its zero tokens
    nonzero = want.abs().sum(-1) > 0
    where = torch.cdist(want[nonzero], seq).argmin(-1)
    torch.testing.assert_close(want[nonzero], seq[where], rtol=0, atol=1e-6)
    assert not want[~nonzero].any() and bool(nonzero[: int(nonzero.sum())].all())
    if (size, keep) == ((80, 32), 80):  # the case that covers the official zero tokens (a crop's share > its size)
        assert int((~nonzero).sum()) == 6
    kept = vlprune.last_selection(m).indices[0].cpu()
    assert torch.equal(kept, where.sort().values)  # the same patches (patch space = the official sequence)
    start = int(torch.nonzero(inputs["input_ids"][0] == 4)[0])
    got = h[0, start: start + keep]
    torch.testing.assert_close(got, torch.cat([seq[where.sort().values], want[~nonzero]]), rtol=0, atol=1e-5)
