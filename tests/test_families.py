"""Every registered method on LLaVA-NeXT and Qwen2.5-VL (tiny random models built from configs).

Matrix (methods x families): identity at full budget, cached generate() == a greedy reference, batch == per
sample, token counts reaching the LLM, multi-image prompts; plus the family-specific layout rules.
"""
from __future__ import annotations

import re

import pytest
import torch

import vlprune
from helpers import append_tokens, llm_call, llm_positions
from vlprune.api import _state
from vlprune.compat import output_cache
from vlprune.registry import get_method, methods

METHODS = sorted(methods())
QUESTIONS = ["what color is the circle ?", "how many star are there ?"]
SPECIAL = [3, 4, 5, 6, 7]  # never generated in the greedy comparisons (EOS, image and vision markers)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny matmuls: a second intra-op thread on a shared 2-core machine costs ~100x in contention
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["llava_next", "qwen2_5_vl"])
def fam(request, next_t, qwen_t):
    t = next_t if request.param == "llava_next" else qwen_t
    vlprune.remove(t.model)
    yield request.param, t
    vlprune.remove(t.model)


# image sizes (height, width): different sizes (and grids / tile layouts) per family
SIZES = {"llava_next": [(20, 36), (40, 16), (30, 30)], "qwen2_5_vl": [(32, 32), (24, 40), (16, 24)]}


def _kw(name: str, method: str, t, question=None) -> dict:
    kw: dict = {}
    if method == "desap":
        kw["processor"] = t.tokenizer
        if name == "llava_next":
            kw.update(clip=t.clip, clip_tokenizer=t.clip_tokenizer)
        if question is not None:
            kw["question"] = question
    return kw


def _budgets(name: str, method: str) -> list:
    """LLaVA-NeXT's encoder-side budgets per image or per tile; a method limited to some families (HiRED splits
    one image's budget over its tiles itself) per image only (refused otherwise: test_family_limited_methods_refuse)."""
    if name != "llava_next" or _in_llm(method):
        return [None]
    return ["global"] if get_method(method).families is not None else ["global", "tile"]


def _skip_without_tiles(name: str, method: str) -> None:
    families = get_method(method).families
    if families is not None and name not in families:
        pytest.skip(f"{method} runs on {families} only (refused elsewhere: test_family_limited_methods_refuse)")
    if name in get_method(method).family_plans:  # FlowCut's LLaVA-NeXT path: its own layout and LLM stage
        pytest.skip(f"{method} on {name} runs its authors' layout and LLM stage: tests/test_flowcut_next.py")


def _in_llm(method: str) -> bool:
    return get_method(method).plan is not None


def _llm_only(method: str) -> bool:
    return get_method(method).encoder is None


def _inputs(t, sizes, per_sample, questions=QUESTIONS, seed=0):
    im = t.images(sizes, seed=seed)
    ids = t.prompt_ids(questions[: len(per_sample)], im, per_sample)
    return {**ids, **im}


def _full(t, name: str) -> int:
    from vlprune.models import get_adapter

    return get_adapter(t.model).tokens_per_image()


def _sizes_for(name: str, method: str, n: int):
    # images of different sizes: samples with different visual-token counts in one batch (in-LLM methods too)
    return (SIZES[name] * 2)[:n]


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_full_budget(fam, method):
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    inputs = _inputs(t, _sizes_for(name, method, 2), [1, 1])
    ref = m(**inputs).logits[:, -1]
    budgets = _budgets(name, method)
    for budget in budgets:
        vc = t.model.config.vision_config
        keep = (vc.image_size // vc.patch_size) ** 2 if budget == "tile" else _full(t, name)
        vlprune.apply(m, method, keep, budget=budget, **_kw(name, method, t))
        out = m(**inputs).logits[:, -1]
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    vlprune.remove(m)
    torch.testing.assert_close(m(**inputs).logits[:, -1], ref, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_beams_at_full_budget_equal_unpatched(fam, method):
    """generate(num_beams=2, num_return_sequences=2) on images of different sizes: generate() repeats the rows,
    the adapters' per-image layouts follow (in-LLM methods raised 'does not match its images' before)."""
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    inputs = _inputs(t, _sizes_for(name, method, 2), [1, 1])
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    ref = m.generate(**inputs, **kw)
    vlprune.apply(m, method, _full(t, name), **_kw(name, method, t))
    out = m.generate(**inputs, **kw)
    assert out.shape[0] == 4 and torch.equal(out, ref)
    vlprune.apply(m, method, 4, **_kw(name, method, t))  # pruned: runs, and gives the prompt back per row
    out = m.generate(**inputs, **kw)
    n = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :n], inputs["input_ids"].repeat_interleave(2, 0))


def _greedy_no_cache(m, inputs, steps):
    cur = dict(inputs)
    pixel = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for _ in range(steps):
        logits = m(**{k: cur[k] for k in cur if k not in pixel}, **pixel, use_cache=False).logits[:, -1]
        logits[:, SPECIAL] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        append_tokens(cur, nxt)
    return cur["input_ids"]


def _greedy_cached(m, inputs, steps, explicit=True):
    """Prefill, then one token per step with the cache. explicit=True passes the attention mask (and, for Qwen,
    M-RoPE positions continuing at the unpruned prompt's last position + 1, as generate() does); explicit=False
    passes neither (one unpadded sample; Qwen then decodes from ``rope_deltas``)."""
    qwen = "image_grid_thw" in inputs
    if qwen and explicit:
        last, _ = m.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                                         attention_mask=inputs["attention_mask"])
        last = last[..., -1:]
    out = m(**inputs, use_cache=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for i in range(steps):
        logits = out.logits[:, -1]
        logits[:, SPECIAL] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        if i + 1 < steps:
            kw = {"attention_mask": mask} if explicit else {}
            if qwen and explicit:
                kw["position_ids"] = last + 1 + i
            out = m(input_ids=nxt, past_key_values=output_cache(out), use_cache=True, **kw)
    return ids


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_generate_matches_greedy_reference(fam, method):
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    inputs = _inputs(t, _sizes_for(name, method, 2), [1, 1])
    # the question is fixed so that a growing prompt (no-cache loop) does not change DeSAP's text cue
    vlprune.apply(m, method, 5, **_kw(name, method, t, question="what color is the circle"))
    gen = m.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=SPECIAL)
    assert torch.equal(gen[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])  # the user's prompt comes back
    if _in_llm(method):  # in-LLM scores read the last token: a growing no-cache prompt changes them by design
        ref = _greedy_cached(m, inputs, 4)
    else:
        ref = _greedy_no_cache(m, inputs, 4)
    assert torch.equal(gen, ref)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_manual_cached_decode(fam, method):
    """One unpadded sample decoded by hand with neither mask nor positions equals generate() (Qwen: the
    ``rope_deltas`` we set for the shortened prompt)."""
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    inputs = _inputs(t, SIZES[name][:1], [1])
    vlprune.apply(m, method, 5, **_kw(name, method, t, question="what color is the circle"))
    gen = m.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=SPECIAL)
    assert torch.equal(gen, _greedy_cached(m, inputs, 4, explicit=False))


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_sample(fam, method):
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    sizes = _sizes_for(name, method, 2)
    vlprune.apply(m, method, 5, **_kw(name, method, t))
    batch = _inputs(t, sizes, [1, 1])
    out = m(**batch).logits[:, -1]
    kept = vlprune.last_selection(m)
    for b in range(2):
        one = _inputs(t, sizes[b: b + 1], [1], questions=QUESTIONS[b:])
        if name == "llava_next":  # one row of the padded pixel_values
            one["pixel_values"] = batch["pixel_values"][b: b + 1]
        else:
            n = int(batch["image_grid_thw"][:b].prod(-1).sum())
            one["pixel_values"] = batch["pixel_values"][n: n + int(batch["image_grid_thw"][b].prod())]
        single = m(**one).logits[:, -1]
        torch.testing.assert_close(single[0], out[b], rtol=1e-4, atol=1e-4)
        assert torch.equal(vlprune.last_selection(m).indices[0], kept.indices[b])


def _llm_kwargs(m, inputs, *keys):
    """Copies of the keyword arguments ``keys`` of the language model's first call in one pass of ``m``."""
    return llm_call(m, inputs, *keys)[0]


def _llm_input(m, inputs):
    """(inputs_embeds, 2-D attention mask) the language model receives."""
    return _llm_kwargs(m, inputs, "inputs_embeds", "attention_mask")


def _last_layer_len(m, inputs) -> int:
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("n", (args[0] if args else kwargs["hidden_states"]).shape[1])

    handle = m.model.language_model.layers[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        m(**inputs)
    finally:
        handle.remove()
    return seen["n"]


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["one", "multi"])
def test_token_counts_reach_llm(fam, method, layout):
    """Visual tokens reaching the LLM: keep per image (per tile with budget='tile'), LLaVA-NeXT newlines on top;
    in-LLM methods: all of them at the first layer, fewer at the last. A multi-image prompt prunes every image."""
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    keep = 5
    per_sample = [1, 1] if layout == "one" else ([2, 2] if _in_llm(method) else [2, 1])
    n_img = sum(per_sample)
    sizes = [SIZES[name][0]] * n_img if _in_llm(method) else (SIZES[name] * 2)[:n_img]
    inputs = _inputs(t, sizes, per_sample)
    n_text = int(inputs["attention_mask"].sum() - (inputs["input_ids"] == 4).sum())
    budgets = _budgets(name, method)
    for budget in budgets:
        vlprune.apply(m, method, keep, budget=budget, **_kw(name, method, t))
        h, mask = _llm_input(m, inputs)
        kept = vlprune.last_selection(m)
        assert len(kept.indices) == n_img
        if _in_llm(method):
            if _llm_only(method):
                assert h.shape[1] == inputs["input_ids"].shape[1]  # the prompt enters whole
            n_last = _last_layer_len(m, inputs)
            assert n_last < h.shape[1]
            if method == "fastv":
                n_vis = int((inputs["input_ids"][0] == 4).sum())
                assert n_last == h.shape[1] - n_vis + keep * per_sample[0]
            continue
        real = h[mask.bool()]
        n_newline = int((real == m.model.image_newline).all(-1).sum()) if name == "llava_next" else 0
        n_visual = real.shape[0] - n_text - n_newline
        if method == "hired":  # the official shares are floored, unpadding drops patches: at most keep per image
            assert n_visual == sum(len(i) for i in kept.indices) and all(0 < len(i) <= keep for i in kept.indices)
        else:
            assert n_visual == _expected_visual(t, name, sizes, keep, budget), budget
        if name == "llava_next" and method != "visionzip":  # one newline per grid row that kept a patch
            s2 = (m.config.vision_config.image_size // m.config.vision_config.patch_size) ** 2
            rows = sum(len(torch.unique((i[i >= s2] - s2) // g[1])) for i, g in zip(kept.indices, kept.grids))
            assert n_newline == rows


def _expected_visual(t, name, sizes, keep, budget) -> int:
    from vlprune.models import get_adapter

    m = t.model
    if name == "qwen2_5_vl":
        return sum(min(keep, (h // t.patch // 2) * (w // t.patch // 2)) for h, w in sizes)
    ad = get_adapter(m, {"budget": budget or "global"})
    total = 0
    for size in sizes:
        lay = ad.layout(size)
        if ad.budget == "global":
            total += min(keep, lay.tile.shape[0])
        else:
            total += sum(min(keep, int((lay.tile == k).sum())) for k in range(lay.n_tiles))
    return total


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_multi_image_identity(fam, method):
    name, t = fam
    _skip_without_tiles(name, method)
    m = t.model
    inputs = _inputs(t, _sizes_for(name, method, 4), [2, 2]) if _in_llm(method) else _inputs(t, SIZES[name][:3], [2, 1])
    ref = m(**inputs).logits[:, -1]
    vlprune.apply(m, method, _full(t, name), **_kw(name, method, t))
    torch.testing.assert_close(m(**inputs).logits[:, -1], ref, rtol=0, atol=1e-5)
    assert len(vlprune.last_selection(m).indices) == (4 if _in_llm(method) else 3)


# -- family specifics ------------------------------------------------------------------------------------
def test_llava_next_layout_matches_model(next_t):
    """Our per-image placeholder count (patches + newlines) equals the model's own packing."""
    from vlprune.models import get_adapter

    ad = get_adapter(next_t.model)
    sizes = SIZES["llava_next"] + [(16, 16), (33, 17), (64, 20)]
    counts = next_t.tokens_per_image(next_t.images(sizes))
    assert [ad.layout(s).tokens for s in sizes] == counts


@torch.no_grad()
@pytest.mark.parametrize("newlines", ["rows", "all", "none"])
def test_llava_next_newlines(next_t, newlines):
    m = next_t.model
    sizes = SIZES["llava_next"][:2]
    inputs = _inputs(next_t, sizes, [1, 1])
    try:
        vlprune.apply(m, "random", 5, adapter_options={"newlines": newlines})
        h, mask = _llm_input(m, inputs)
        kept = vlprune.last_selection(m)
    finally:
        vlprune.remove(m)
    real = h[mask.bool()]
    n_newline = int((real == m.model.image_newline).all(-1).sum())
    s2 = (m.config.vision_config.image_size // m.config.vision_config.patch_size) ** 2
    rows = sum(len(torch.unique((i[i >= s2] - s2) // g[1])) for i, g in zip(kept.indices, kept.grids))
    expected = {"rows": rows, "all": sum(g[0] for g in kept.grids), "none": 0}[newlines]
    assert n_newline == expected
    n_text = int(inputs["attention_mask"].sum() - (inputs["input_ids"] == 4).sum())
    assert real.shape[0] == n_text + 10 + n_newline


@torch.no_grad()
@pytest.mark.parametrize("method", ["desap", "visionzip", "vispruner", "random"])
def test_pixels_are_hashed_only_for_seeded_methods(fam, method, monkeypatch):
    """Hashing an image's pixels copies them to the host (a device sync on a GPU): only ``random`` may pay for it."""
    import zlib

    name, t = fam
    calls = []
    real_crc = zlib.crc32
    monkeypatch.setattr(zlib, "crc32", lambda data, *a: calls.append(memoryview(data).nbytes) or real_crc(data, *a))
    inputs = _inputs(t, SIZES[name][:2], [1, 1])
    try:
        vlprune.apply(t.model, method, 6, **_kw(name, method, t))
        t.model(**inputs)
    finally:
        vlprune.remove(t.model)
    hashed = [n for n in calls if n >= 1000]  # bytes of pixel data (the seed keys derived from it are a few bytes)
    assert bool(hashed) == (method == "random")


@torch.no_grad()
def test_qwen_positions_are_the_unpruned_ones(qwen_t):
    """Text after the image keeps its M-RoPE position; kept image tokens keep their (t, h, w) positions."""
    m = qwen_t.model
    inputs = _inputs(qwen_t, SIZES["qwen2_5_vl"][:2], [1, 1])
    full, _ = m.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                                     attention_mask=inputs["attention_mask"])
    pos, kept = llm_positions(m, inputs, "random", 3)
    assert pos.shape[0] == 3 and pos.shape[2] < full.shape[2]
    torch.testing.assert_close(pos[..., -1], full[..., -1])
    for b in range(2):
        short_img = pos[:, b][:, _img_cols(pos, b, inputs, kept)]
        long_cols = torch.nonzero(inputs["input_ids"][b] == 4)[:, 0]
        torch.testing.assert_close(short_img, full[:, b][:, long_cols[kept.indices[b]]])


def _img_cols(pos, b, inputs, kept):
    """Columns of sample b's kept image tokens in the shortened prompt (left padded, text unchanged)."""
    ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
    first = int(torch.nonzero(ids == 4)[0])
    n_kept = len(kept.indices[b])
    width = pos.shape[-1]
    real = len(ids) - int((ids == 4).sum()) + n_kept
    start = width - real + first
    return torch.arange(start, start + n_kept)



def _qwen_reference(visual, pixel_values, thw, block: int, mode: str = "qq"):
    """Unchunked eager signals of one Qwen2.5-VL ViT pass, per image in raster order: (mean attention received
    summed per 2x2 unit, head-mean unit keys, decoupled ``mode`` attention through ``proj`` and the merger); the
    model's own RoPE, one full (heads x n x n) softmax per attention scope."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    blk, seen = visual.blocks[block], {}
    handle = blk.register_forward_pre_hook(lambda mod, args, kw: seen.update(x=args[0], **kw), with_kwargs=True)
    try:
        merged = visual(pixel_values, grid_thw=thw).pooler_output
    finally:
        handle.remove()
    n, heads, unit = seen["x"].shape[0], blk.attn.num_heads, visual.spatial_merge_size**2
    q, k, v = blk.attn.qkv(blk.norm1(seen["x"])).reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    keys = k.mean(1).view(-1, unit, k.shape[-1]).mean(1)
    q, k = apply_rotary_pos_emb_vision(q, k, *seen["position_embeddings"])
    pick = {"q": q, "k": k, "v": v}
    received, attended = torch.zeros(n), torch.zeros_like(v)
    cu = seen["cu_seqlens"].tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            probs = torch.softmax(q[a:b].transpose(0, 1) @ k[a:b].permute(1, 2, 0) * blk.attn.scaling, -1)
            received[a:b] = probs.mean((0, 1))
            pair = torch.softmax(pick[mode[0]][a:b].transpose(0, 1) @ pick[mode[1]][a:b].permute(1, 2, 0)
                                 * blk.attn.scaling, -1)
            attended[a:b] = (pair @ v[a:b].transpose(0, 1)).transpose(0, 1)
    decoupled = visual.merger(blk.attn.proj(attended.reshape(n, -1)))
    window_index, _ = get_vision_window_index(thw, spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    reverse = torch.argsort(window_index)
    signals = (received.view(-1, unit).sum(-1)[reverse], keys[reverse], decoupled[reverse])
    bounds = [0] + (thw.prod(-1) // unit).cumsum(0).tolist()
    return merged, [[s[lo:hi] for s in signals] for lo, hi in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
@pytest.mark.parametrize("block", [0, 1])  # a window-attention block, the full-attention one
@pytest.mark.parametrize("chunk", [1, 1280, None])  # one query row at a time, 5-13 rows (uneven tails), the default
def test_qwen_chunked_signals_equal_eager_reference(qwen_t, block, chunk):
    """The lazily computed, row-chunked signals equal one unchunked softmax per attention scope, image by image."""
    from vlprune.models.qwen2_5_vl import _VisionPass

    visual = qwen_t.model.model.visual
    im = qwen_t.images(SIZES["qwen2_5_vl"])
    merged, ref = _qwen_reference(visual, im["pixel_values"], im["image_grid_thw"], block, "qq")
    vit = _VisionPass(visual, im["pixel_values"], im["image_grid_thw"], block, chunk=chunk)
    torch.testing.assert_close(vit.merged, merged, rtol=0, atol=0)
    for i, (received, keys, decoupled) in enumerate(ref):
        torch.testing.assert_close(vit.received(i), received, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vit.keys(i), keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vit.decoupled(i, "qq"), decoupled, rtol=1e-5, atol=1e-5)
    _, ref_qk = _qwen_reference(visual, im["pixel_values"], im["image_grid_thw"], block, "qk")
    torch.testing.assert_close(vit.decoupled(1, "qk"), ref_qk[1][2], rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("method, expected", [
    ("random", set()), ("vispruner", {"qkv", "column_means"}), ("visionzip", {"qkv", "column_means"}),
    ("desap", {"qkv", "column_means", "attend"}),
])
def test_qwen_signals_only_on_demand(qwen_t, monkeypatch, method, expected):
    """The adapter computes only what the method asks for: ``random`` projects and scores nothing."""
    from vlprune.models.qwen2_5_vl import _VisionPass

    calls = {"qkv": 0, "column_means": 0, "attend": 0}
    for name, attr in [("qkv", "_projections"), ("column_means", "_column_means"), ("attend", "_attend")]:
        def spy(self, *args, _orig=getattr(_VisionPass, attr), _name=name):
            calls[_name] += 1
            return _orig(self, *args)

        monkeypatch.setattr(_VisionPass, attr, spy)
    m = qwen_t.model
    inputs = _inputs(qwen_t, SIZES["qwen2_5_vl"][:2], [1, 1])
    try:
        vlprune.apply(m, method, 5, **_kw("qwen2_5_vl", method, qwen_t))
        m(**inputs)
    finally:
        vlprune.remove(m)
    assert {name for name, n in calls.items() if n} == expected


def test_errors(next_t, qwen_t):
    with pytest.raises(NotImplementedError, match="LlavaNextForConditionalGeneration.*Qwen2_5_VLForConditionalGeneration"):
        vlprune.apply(torch.nn.Linear(2, 2), "random", 4)
    with pytest.raises(ValueError, match="budget"):
        vlprune.apply(next_t.model, "random", 4, budget="tiles")
    with pytest.raises(TypeError, match="no option"):
        vlprune.apply(qwen_t.model, "random", 4, budget="tile")
    with pytest.raises(ValueError, match="budget='global'"):
        vlprune.apply(next_t.model, "fastv", 4, budget="tile")
    with pytest.raises(ValueError, match="out of range"):
        vlprune.apply(next_t.model, "random", 17, budget="tile")
    for model in (next_t.model, qwen_t.model):
        vlprune.remove(model)


def test_family_limited_methods_refuse(next_t, qwen_t, tiny):
    """HiRED needs LLaVA-NeXT's global image and sub-images, FlowCut runs on LLaVA-1.5 and LLaVA-NeXT, HoloV on those
    and Qwen2.5-VL (none per tile): a clear error naming the reason on the other families and per tile."""
    limited = [name for name, spec in methods().items() if spec.families is not None]
    assert "hired" in limited
    for method in limited:
        spec = get_method(method)
        for fam_name, model, budget in (("llava", tiny.model, None), ("qwen2_5_vl", qwen_t.model, None),
                                        ("llava_next", next_t.model, "tile")):
            if fam_name in spec.families and budget is None:
                continue
            why = f"runs on {', '.join(spec.families)} with budget='global' only: {spec.families_why}"
            with pytest.raises(ValueError, match=re.escape(why)):
                vlprune.apply(model, method, 4, budget=budget)
            assert _state(model) is None  # refused before patching anything



@torch.no_grad()
def test_hired_keeps_the_official_tiles_choice_on_llava_next(next_t):
    """End to end: the patches HiRED keeps through vlprune.apply are select_tiles on the tower's own attention
    (eager, output_attentions: layer 0 of the global image, the feature layer's block of every tile), mapped
    through LLaVA-NeXT's stitching and unpadding."""
    from vlprune.methods.hired import select_tiles
    from vlprune.models import get_adapter

    m = next_t.model
    size = SIZES["llava_next"][0]
    inputs = _inputs(next_t, [size], [1])
    lay = get_adapter(m).layout(size)
    tower = m.model.vision_tower
    impl = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        att = tower(inputs["pixel_values"][0, : lay.n_tiles], output_attentions=True).attentions
    finally:
        tower.config._attn_implementation = impl
    f = m.config.vision_feature_layer % (len(att) + 1)
    early, late = (a[:, :, 0, 1:].mean(1) for a in (att[0], att[f - 1]))
    for keep in (5, 40):
        vlprune.apply(m, "hired", keep)
        m(**inputs)
        mask = select_tiles(early[0], late, keep, 0.5)
        want = torch.nonzero(mask[lay.tile, lay.patch])[:, 0]
        got = vlprune.last_selection(m).indices[0]
        assert torch.equal(got.cpu(), want) and 0 < len(got) <= keep
    vlprune.remove(m)
