"""vlprune's FlowCut on a tiny LLaVA-NeXT against the authors' LLaVA-NeXT path (flowcut_next_official.py: their
package's packing and LLM code, unmodified): the patches each tile keeps, the LLM's input tokens, the visual tokens
kept after LLM layer 1 and the LLM's final hidden states (1e-5)."""
import pytest
import torch

import vlprune
from test_families import _llm_input  # (inputs_embeds, mask) the language model receives

from . import flowcut_next_official as official
from .sources import TieWatch

SIDE, PATCH = 24, 1  # 24 x 24 patches per tile: the authors' restore_image_features_sorted hard-codes 24


@pytest.fixture(scope="module")
def t():
    from vlprune.testing import tiny_llava_next

    t = tiny_llava_next(seed=3, side=SIDE, patch=PATCH, attn="eager", vision_layers=8)
    with torch.no_grad():  # peaked [CLS] attention, so that the adaptive cuts (blocks 1 and 3) remove tokens
        for block in t.model.model.vision_tower.encoder.layers:
            block.self_attn.q_proj.weight.mul_(4.0)
            block.self_attn.k_proj.weight.mul_(4.0)
    return t


def official_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """LLaVA's prompt: the run of image placeholders (id 4) replaced by one IMAGE_TOKEN_INDEX."""
    ids = input_ids[0].tolist()
    first, n = ids.index(4), ids.count(4)
    return torch.tensor([ids[:first] + [official.IMAGE_TOKEN_INDEX] + ids[first + n:]])


@torch.no_grad()
@pytest.mark.parametrize("size,keep", [((20, 44), 40), ((50, 22), 64), ((30, 30), 100), ((33, 17), 24)])
def test_tiny_llava_next_equals_official(t, size, keep):
    from vlprune.models import get_adapter

    m = t.model
    lay = get_adapter(m).layout(size)
    for seed in range(10):  # the official code orders with non-stable topk: redraw until it met no tie
        images = t.images([size], seed=100 * seed + keep)
        inputs = {**t.prompt_ids(["what is it ?"], images, [1]), **images}
        with TieWatch() as watch:
            embeds, final, seen = official.flowcut_next(m, official_ids(inputs["input_ids"]),
                                                        images["pixel_values"][0, : lay.n_tiles], size, keep)
        if not watch.ties:
            break
    assert not watch.ties
    # the tower stage: keep // 2 patches per tile, the adaptive counts shared by the image's tiles
    tower_keep = seen["tower_keep"]
    assert tower_keep.shape == (lay.n_tiles, keep // 2)
    where = torch.full((lay.n_tiles, SIDE * SIDE), -1, dtype=torch.long)
    where[lay.tile, lay.patch] = torch.arange(lay.tile.shape[0])
    enc = where[torch.arange(lay.n_tiles).unsqueeze(1), tower_keep].flatten()
    enc = enc[enc >= 0].sort().values  # the official LLM input's visual tokens, in patch space (= their order)
    vlprune.apply(m, "flowcut", keep)
    try:
        h, _ = _llm_input(m, inputs)
        out = m(**inputs, output_hidden_states=True, use_cache=True)
        kept = vlprune.last_selection(m).indices[0].cpu()
        # two cached decoding steps against the authors' forward run without a cache on prompt + new tokens
        new = torch.tensor([[7, 9]])
        mask = torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.long)
        step = m(input_ids=new[:, :1], past_key_values=out.past_key_values, attention_mask=mask, use_cache=True,
                 output_hidden_states=True)
        step2 = m(input_ids=new[:, 1:], past_key_values=step.past_key_values, use_cache=True, output_hidden_states=True,
                  attention_mask=torch.cat([mask, mask[:, :1]], 1))
    finally:
        vlprune.remove(m)
    want = official.decode_reference(m, embeds, seen, keep, new)
    torch.testing.assert_close(torch.cat([step.hidden_states[-1], step2.hidden_states[-1]], 1), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(h, embeds, rtol=0, atol=1e-5)  # every LLM input token, no image_newline
    start = int(torch.nonzero(official_ids(inputs["input_ids"])[0] == official.IMAGE_TOKEN_INDEX)[0])
    assert h.shape[1] == inputs["input_ids"].shape[1] - int((inputs["input_ids"] == 4).sum()) + len(enc)
    # the LLM stage: the same visual tokens kept after layer 1, the same final hidden states (positions renumbered)
    if len(enc) > keep:
        assert torch.equal(kept, enc[seen["llm_keep"][0].cpu()])
        assert final.shape[1] == h.shape[1] - len(enc) + keep
    else:
        assert torch.equal(kept, enc) and "llm_keep" not in seen
    torch.testing.assert_close(out.hidden_states[-1], final, rtol=0, atol=1e-5)
    assert start > 0
