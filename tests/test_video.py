"""Videos: every registered method on Video-LLaVA (image and video prompts) and on Qwen2.5-VL videos, on tiny
random models built from the real transformers classes.

Matrix (methods x cases): identity at full budget and an exact ``remove()``, cached generate() == a greedy
reference, batch == per sample, the number of visual tokens the LLM receives, mixed image + video prompts in one
batch; plus the video specifics (frames ranked as one set, per-frame budgets, [CLS] tokens, M-RoPE positions).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlprune
from helpers import append_tokens, llm_call, llm_positions
from vlprune.compat import output_cache
from vlprune.registry import get_method, methods

METHODS = sorted(m for m, spec in methods().items() if spec.families is None)  # HiRED: LLaVA-NeXT only
CASES = ["vl-image", "vl-video", "qwen-video"]
QUESTIONS = ["what color is the circle ?", "how many star are there ?"]
SPECIAL = [3, 4, 5, 6, 7]  # never generated in the greedy comparisons (EOS, image / video placeholders, markers)
FRAMES = 3  # Video-LLaVA test videos: 3 frames of 1 + 16 tokens
QWEN_SIZES = [(32, 32), (24, 40)]  # Qwen test videos: 4 frames -> 2 temporal slices of (h/8) x (w/8) tokens


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def video_t():
    from vlprune.testing import tiny_video_llava

    return tiny_video_llava()


def _in_llm(method: str) -> bool:
    return get_method(method).plan is not None


def _kw(method: str, t, question=None) -> dict:
    kw: dict = {}
    if method == "desap":
        kw["processor"] = t.tokenizer
        if hasattr(t, "clip"):
            kw.update(clip=t.clip, clip_tokenizer=t.clip_tokenizer)
        if question is not None:
            kw["question"] = question
    return kw


def _inputs(case: str, t, items: list[str], questions=QUESTIONS, seed: int = 0, only: int | None = None) -> dict:
    """A left-padded batch (``items[b]``: "i"/"v" per item of sample b); ``only``: sample ``only`` of that batch
    alone (its own pixels, unpadded)."""
    if case.startswith("vl"):
        n_img = sum(k.count("i") for k in items)
        n_vid = sum(k.count("v") for k in items)
        px = t.pixels(images=n_img, videos=n_vid, frames=FRAMES, seed=seed)
        if only is not None:
            px = _rows(px, items, only)
            items, questions = [items[only]], [questions[only]]
        return {**t.prompt_ids(list(questions[: len(items)]), items, frames=FRAMES), **px}
    n_vid = sum(k.count("v") for k in items)
    n_img = sum(k.count("i") for k in items)
    px = {**t.videos((QWEN_SIZES * 4)[:n_vid], frames=4, seed=seed)}
    if n_img:
        px.update(t.images([(16, 24)] * n_img, seed=seed))
    if only is not None:
        px = _qwen_rows(px, items, only)
        items, questions = [items[only]], [questions[only]]
    return {**t.mixed_prompt_ids(list(questions[: len(items)]), px, items), **px}


def _rows(px: dict, items: list[str], b: int) -> dict:
    """Video-LLaVA pixels of sample b."""
    out = {}
    for key, kind in (("pixel_values", "i"), ("pixel_values_images", "i"), ("pixel_values_videos", "v")):
        if key in px:
            lo = sum(k.count(kind) for k in items[:b])
            hi = lo + items[b].count(kind)
            if hi > lo:
                out[key] = px[key][lo:hi]
    return out


def _qwen_rows(px: dict, items: list[str], b: int) -> dict:
    """Qwen2.5-VL pixels (flattened patches) and grids of sample b."""
    out = {}
    for pix, grid, kind in (("pixel_values_videos", "video_grid_thw", "v"), ("pixel_values", "image_grid_thw", "i")):
        if grid not in px:
            continue
        lo = sum(k.count(kind) for k in items[:b])
        hi = lo + items[b].count(kind)
        if hi == lo:
            continue
        sizes = px[grid].prod(-1)
        start, stop = int(sizes[:lo].sum()), int(sizes[:hi].sum())
        out[pix], out[grid] = px[pix][start:stop], px[grid][lo:hi]
        if kind == "v":
            out["second_per_grid_ts"] = px["second_per_grid_ts"][lo:hi]
    return out


@pytest.fixture(params=CASES)
def case(request, video_t, qwen_t):
    t = qwen_t if request.param == "qwen-video" else video_t
    vlprune.remove(t.model)
    yield request.param, t
    vlprune.remove(t.model)


def _items(case: str, n: int = 2) -> list[str]:
    return ["i" if case == "vl-image" else "v"] * n


def _full(t) -> int:
    from vlprune.models import get_adapter

    return get_adapter(t.model).tokens_per_image()


def _visual_ids(t) -> list[int]:
    cfg = t.model.config
    return [cfg.image_token_id, cfg.video_token_id]


# -- the matrix ------------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_full_budget_and_exact_remove(case, method):
    name, t = case
    m = t.model
    inputs = _inputs(name, t, _items(name))
    ref = m(**inputs).logits[:, -1]
    state = dict(m.__dict__)
    vlprune.apply(m, method, _full(t), **_kw(method, t))
    torch.testing.assert_close(m(**inputs).logits[:, -1], ref, rtol=0, atol=1e-5)
    vlprune.remove(m)
    assert m.__dict__.keys() == state.keys() and all(m.__dict__[k] is v for k, v in state.items())
    torch.testing.assert_close(m(**inputs).logits[:, -1], ref, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_beams_at_full_budget_equal_unpatched(case, method):
    """generate(num_beams=2, num_return_sequences=2) repeats every prompt row: the pruned image / video features
    (transformers >= 5.18: split by generate() per row) and the per-item layouts follow."""
    name, t = case
    m = t.model
    inputs = _inputs(name, t, _items(name))
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    ref = m.generate(**inputs, **kw)
    vlprune.apply(m, method, _full(t), **_kw(method, t))
    assert torch.equal(m.generate(**inputs, **kw), ref)
    vlprune.apply(m, method, 4, **_kw(method, t))
    out = m.generate(**inputs, **kw)
    n = inputs["input_ids"].shape[1]
    assert out.shape[0] == 4 and torch.equal(out[:, :n], inputs["input_ids"].repeat_interleave(2, 0))


def _greedy_no_cache(m, inputs, steps):
    cur = dict(inputs)
    text = ("input_ids", "attention_mask", "mm_token_type_ids")
    pixel = {k: v for k, v in inputs.items() if k not in text}
    for _ in range(steps):
        logits = m(**{k: cur[k] for k in text if k in cur}, **pixel, use_cache=False).logits[:, -1]
        logits[:, SPECIAL] = float("-inf")
        append_tokens(cur, logits.argmax(-1, keepdim=True))
    return cur["input_ids"]


def _greedy_cached(m, inputs, steps):
    """Prefill, then one token per step from the cache, passing the mask (and for Qwen the M-RoPE positions
    after the unpruned prompt's last one, as generate() does)."""
    qwen = "mm_token_type_ids" in inputs
    if qwen:
        last, _ = m.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs["attention_mask"])
        last = last[..., -1:]
    # the prompt's mask as the LLM gets it (the encoder step may shorten it)
    (mask,), out = llm_call(m, inputs, "attention_mask", use_cache=True)
    ids = inputs["input_ids"]
    for i in range(steps):
        logits = out.logits[:, -1]
        logits[:, SPECIAL] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if i + 1 < steps:
            kw = {"position_ids": last + 1 + i} if qwen else {}
            out = m(input_ids=nxt, past_key_values=output_cache(out), use_cache=True, attention_mask=mask, **kw)
    return ids


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_cached_generate_equals_reference(case, method):
    """generate() with the KV cache == a no-cache greedy loop (encoder-side methods: the whole pruned forward
    re-run on the grown prompt) or a hand-written cached loop (in-LLM scores read the last token by design)."""
    name, t = case
    m = t.model
    inputs = _inputs(name, t, _items(name))
    vlprune.apply(m, method, 5, **_kw(method, t, question="what color is the circle"))
    gen = m.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=SPECIAL)
    assert torch.equal(gen[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    ref = _greedy_cached(m, inputs, 4) if _in_llm(method) else _greedy_no_cache(m, inputs, 4)
    assert torch.equal(gen, ref)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_sample(case, method):
    name, t = case
    m = t.model
    items = _items(name)
    vlprune.apply(m, method, 5, **_kw(method, t))
    out = m(**_inputs(name, t, items)).logits[:, -1]
    kept = vlprune.last_selection(m)
    for b in range(2):
        single = m(**_inputs(name, t, items, only=b)).logits[:, -1]
        torch.testing.assert_close(single[0], out[b], rtol=1e-4, atol=1e-4)
        assert torch.equal(vlprune.last_selection(m).indices[0], kept.indices[b])


def _llm_input(m, inputs):
    """(inputs_embeds, attention mask) the language model receives, and its last layer's sequence length."""
    seen = {}

    def first(module, args, kwargs):
        seen.setdefault("h", kwargs["inputs_embeds"].detach().clone())
        seen.setdefault("mask", kwargs["attention_mask"])

    def last(module, args, kwargs):
        seen.setdefault("n", (args[0] if args else kwargs["hidden_states"]).shape[1])

    lm = m.model.language_model
    handles = [lm.register_forward_pre_hook(first, with_kwargs=True),
               lm.layers[-1].register_forward_pre_hook(last, with_kwargs=True)]
    try:
        m(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen["h"], seen["mask"], seen["n"]


def _fixed_tokens(name: str, items: list[str]) -> int:
    """Placeholders no method prunes: Video-LLaVA's frame [CLS] tokens."""
    return sum(k.count("v") for k in items) * FRAMES if name.startswith("vl") else 0


def _check_counts(name, t, method, items, keep):
    m = t.model
    inputs = _inputs(name, t, items)
    visual = torch.isin(inputs["input_ids"], torch.tensor(_visual_ids(t)))
    n_text = int(inputs["attention_mask"].sum() - visual.sum())
    n_items = sum(len(k) for k in items)
    h, mask, n_last = _llm_input(m, inputs)
    kept = vlprune.last_selection(m)
    assert len(kept.indices) == n_items
    fixed = _fixed_tokens(name, items)
    if _in_llm(method):
        n_prunable = int(visual[0].sum()) - _fixed_tokens(name, items[:1])
        assert n_last < h.shape[1]
        if method == "fastv":  # keep per item of the row; the frames' [CLS] tokens all stay
            assert n_last == h.shape[1] - n_prunable + keep * len(items[0])
        return
    n_visual = int(mask.sum()) - n_text
    assert n_visual == keep * n_items + fixed
    assert all(len(i) <= keep for i in kept.indices)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
def test_llm_receives_keep(case, method):
    name, t = case
    vlprune.apply(t.model, method, 5, **_kw(method, t))
    _check_counts(name, t, method, _items(name), 5)


@torch.no_grad()
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["vl", "qwen"])
def test_mixed_image_and_video_prompts(family, method, video_t, qwen_t):
    """One batch: a sample with an image then a video (Qwen: a video then an image) and a sample with a video;
    full budget equals the unpatched model (logits, beams), a pruned run keeps ``keep`` per image and per video."""
    t = video_t if family == "vl" else qwen_t
    name = "vl-video" if family == "vl" else "qwen-video"
    items = ["iv", "v"] if family == "vl" else ["vi", "v"]
    m = t.model
    inputs = _inputs(name, t, items)
    try:
        ref = m(**inputs).logits[:, -1]
        beams = dict(max_new_tokens=2, num_beams=2, num_return_sequences=2, do_sample=False)
        ref_beams = m.generate(**inputs, **beams)
        vlprune.apply(m, method, _full(t), **_kw(method, t))
        torch.testing.assert_close(m(**inputs).logits[:, -1], ref, rtol=0, atol=1e-5)
        assert torch.equal(m.generate(**inputs, **beams), ref_beams)
        vlprune.apply(m, method, 5, **_kw(method, t))
        _check_counts(name, t, method, items, 5)
        gen = m.generate(**inputs, max_new_tokens=2, do_sample=False, suppress_tokens=SPECIAL)
        assert torch.equal(gen[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    finally:
        vlprune.remove(m)


# -- video specifics -------------------------------------------------------------------------------------------
def _frame_cls_attention(m, videos):
    """Head-mean [CLS] -> patch attention of every frame at the feature layer's block, read off the unpatched
    video tower (eager attention, ``output_attentions``): (videos, frames, N)."""
    tower = m.model.video_tower
    impl = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        att = tower(videos.flatten(0, 1), output_attentions=True).attentions
    finally:
        tower.config._attn_implementation = impl
    f = m.config.vision_feature_layer % (len(att) + 1)
    return att[f - 1][:, :, 0, 1:].mean(1).view(*videos.shape[:2], -1)


@torch.no_grad()
@pytest.mark.parametrize("budget", ["video", "frame"])
def test_frames_are_ranked_as_one_set(video_t, budget):
    """VisionZip's dominant tokens (no contextual ones): budget="video" keeps the top ``keep`` of ALL frames'
    [CLS] attention (each frame scored by its own [CLS]), so frames keep different counts; budget="frame" keeps
    the top ``keep`` of every frame."""
    m = video_t.model
    inputs = _inputs("vl-video", video_t, ["v", "v"])
    att = _frame_cls_attention(m, inputs["pixel_values_videos"])
    n = att.shape[-1]
    keep = 6
    try:
        vlprune.apply(m, "visionzip", keep, budget=budget, contextual_ratio=0.0, include_cls=False)
        m(**inputs)
        kept = vlprune.last_selection(m)
    finally:
        vlprune.remove(m)
    for v in range(2):
        if budget == "video":
            want = torch.sort(att[v].flatten().topk(keep).indices).values
        else:
            want = torch.cat([t * n + torch.sort(att[v, t].topk(keep).indices).values for t in range(FRAMES)])
        assert torch.equal(kept.indices[v], want)
        assert kept.grids[v] == (FRAMES * video_t.grid, video_t.grid)
    per_frame = torch.bincount(kept.indices[0] // n, minlength=FRAMES)
    assert (per_frame == keep).all() if budget == "frame" else int(per_frame.sum()) == keep


@torch.no_grad()
@pytest.mark.parametrize("method", ["random", "vispruner", "desap"])
def test_video_layout_keeps_every_frame_cls(video_t, method):
    """After pruning, a video reaches the LLM frame by frame: the frame's own [CLS] token (the unpatched
    model's projected [CLS] row), then its kept patches in raster order (the unpatched projected patch rows)."""
    m = video_t.model
    inputs = _inputs("vl-video", video_t, ["v", "v"])
    full = m.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output
    full = full.reshape(2, FRAMES, -1, full.shape[-1])  # (videos, frames, 1 + N, D)
    n = full.shape[2] - 1
    try:
        vlprune.apply(m, method, 7, merge=False, **_kw(method, video_t)) if method == "desap" else \
            vlprune.apply(m, method, 7)
        h, mask, _ = _llm_input(m, inputs)
        kept = vlprune.last_selection(m)
    finally:
        vlprune.remove(m)
    vid = inputs["input_ids"] == m.config.video_token_id
    for v in range(2):
        # the shortened prompt is left-padded: the visual rows of row v are the ones after its text head
        rows = h[v][mask[v].bool()][int(vid[v].nonzero()[0]) - int((~inputs["attention_mask"][v].bool()).sum()):]
        want = []
        for t in range(FRAMES):
            want.append(full[v, t, :1])
            idx = kept.indices[v][kept.indices[v] // n == t] % n
            want.append(full[v, t, 1 + idx])
        want = torch.cat(want)
        torch.testing.assert_close(rows[: want.shape[0]], want, rtol=1e-5, atol=1e-5)


def test_video_budgets_are_validated(video_t):
    m = video_t.model
    with pytest.raises(ValueError, match="budget must be 'video'"):
        vlprune.apply(m, "random", 4, budget="global")
    with pytest.raises(ValueError, match="budget='video'"):
        vlprune.apply(m, "fastv", 4, budget="frame")
    with pytest.raises(ValueError, match="out of range"):
        vlprune.apply(m, "random", 17, budget="frame")  # 16 patches per frame
    with pytest.raises(ValueError, match="frames"):
        vlprune.apply(m, "random", 4, adapter_options={"frames": 0})
    with pytest.raises(ValueError, match="runs on llava_next"):
        vlprune.apply(m, "hired", 4)
    vlprune.apply(m, "random", 16 * 8)  # default: keep per video of up to 8 frames
    vlprune.remove(m)
    with pytest.raises(ValueError, match="out of range"):
        vlprune.apply(m, "random", 16 * 8 + 1)


@torch.no_grad()
def test_qwen_video_positions_are_the_unpruned_ones(qwen_t):
    """M-RoPE (t, h, w) positions of the kept video tokens and of the text after them are the unpruned prompt's
    (``get_rope_index`` with ``video_grid_thw`` and ``second_per_grid_ts``)."""
    m = qwen_t.model
    inputs = _inputs("qwen-video", qwen_t, ["v", "v"])
    full, _ = m.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                     video_grid_thw=inputs["video_grid_thw"],
                                     second_per_grid_ts=inputs["second_per_grid_ts"],
                                     attention_mask=inputs["attention_mask"])
    video = m.config.video_token_id
    assert len(torch.unique(full[0, 0][inputs["input_ids"][0] == video])) == 2  # two temporal slices, two times
    pos, kept = llm_positions(m, inputs, "random", 3)
    pos = pos[-3:]
    torch.testing.assert_close(pos[..., -1], full[..., -1])
    for b in range(2):
        long_cols = torch.nonzero(inputs["input_ids"][b] == video)[:, 0]
        tail = inputs["input_ids"].shape[1] - 1 - int(long_cols[-1])  # tokens after the video: the same in both
        k = len(kept.indices[b])
        short = pos[:, b, pos.shape[-1] - tail - k: pos.shape[-1] - tail]
        torch.testing.assert_close(short, full[:, b][:, long_cols[kept.indices[b]]])


# -- FLOPs and bench presets -----------------------------------------------------------------------------------
def test_video_flops_presets():
    """video-llava-7b: 2048 patch tokens + 8 [CLS] on every layer; keep 2048 is the full model, an encoder-side
    method gives every layer keep + 8, FastV keeps all 2056 in its first K layers."""
    from vlprune.flops import layer_flops, method_tflops, tokens_per_layer
    from vlprune.presets import get_preset

    shape = get_preset("video-llava-7b")
    full = method_tflops(None, None, shape)
    assert full == pytest.approx(32 * layer_flops(2056, 4096, 11008) / 1e12)
    assert method_tflops("vispruner", 2048, shape) == full
    for keep in (1024, 227, 114):
        assert tokens_per_layer("vispruner", keep, shape) == [keep + 8] * 32
        fastv = tokens_per_layer("fastv", keep, shape)
        assert fastv[0] == 2056 and fastv[-1] == keep + 8
    assert tokens_per_layer("visiondrop", 2048, shape) == [2056] * 32  # 1.5 x keep capped at the 2048 patches
    qwen = get_preset("qwen2.5-vl-7b-video")
    assert qwen.frames == 16 and tokens_per_layer(None, None, qwen) == [2048] * 28


def test_bench_tiny_video_llava(tmp_path):
    """``vlprune bench`` on a video model: 8 frames x (16 patches + [CLS]) placeholders, the [CLS] tokens reach
    every layer, ``keep`` patches per video for encoder-side methods and at FastV's last layer."""
    import json

    from typer.testing import CliRunner

    from vlprune.cli import app

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [
        "bench", "--model", "tiny-video", "--dtype", "fp32", "--device", "cpu", "--methods", "none,desap,fastv",
        "--keep", "8", "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(out),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["family"] == "video_llava" and report["visual_tokens"] == 128 and not report["skipped"]
    text = report["text_tokens"]
    full, desap, fastv = report["results"]
    assert full["llm_tokens"] == [128 + 8 + text] * 2
    assert desap["llm_tokens"] == [8 + 8 + text] * 2
    assert fastv["llm_tokens"] == [128 + 8 + text, 8 + 8 + text]
    assert 1 < fastv["flops_bound_speedup"] < desap["flops_bound_speedup"]


# -- layout helpers (pure functions) ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([7, 9]), st.integers(1, 3)), min_size=0, max_size=4), st.integers(1, 3))
def test_walk_items_recovers_prompt_order(items, rows):
    """Items of two kinds (sizes 2 and 3 x their count), laid out row by row with text between: ``walk_items``
    gives back every row's items in order; a shortened prompt is reported as not matching (None)."""
    from vlprune.models.frames import walk_items

    sizes = {7: [], 9: []}
    ids, want = [], []
    for _ in range(rows):
        row, got = [1], []
        for kind, n in items:
            size = (2 if kind == 7 else 3) * n
            got.append((kind, len(sizes[kind])))
            sizes[kind].append(size)
            row += [kind] * size + [1]
        ids.append(row)
        want.append(got)
    assert walk_items(torch.tensor(ids), sizes) == want
    if items:
        short = [r[:1] + r[2:] for r in ids]  # one placeholder fewer in every row
        assert walk_items(torch.tensor(short), sizes) is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.data())
def test_pack_frames_layout(frames, n, data):
    """Per frame its fixed token, then its kept patches in raster order, then the unplaced tokens; ``assign``
    points every kept patch at its own token, counted among the prunable tokens."""
    from vlprune.models.frames import pack_frames

    total = frames * n
    kept = sorted(data.draw(st.sets(st.integers(0, total - 1), min_size=1, max_size=total)))
    extra = data.draw(st.integers(0, 2))  # tokens before the indices (no patch), e.g. PruMerge's extra token
    k = extra + len(kept)
    feats = torch.arange(k, dtype=torch.float).unsqueeze(1) + 100
    cls = -torch.arange(frames, dtype=torch.float).unsqueeze(1) - 1
    piece = {"feats": feats, "index": torch.tensor(kept), "assign": None, "members": torch.arange(total)}
    tokens, got, assign, fixed = pack_frames([piece], frames, n, cls)
    assert tokens.shape[0] == frames + k and int(fixed.sum()) == frames
    assert torch.equal(got, torch.tensor(kept))
    rows = tokens[:, 0].tolist()
    expect = []
    for t in range(frames):
        expect.append(-t - 1.0)
        expect += [100.0 + extra + j for j, v in enumerate(kept) if v // n == t]
    expect += [100.0 + j for j in range(extra)]
    assert rows == expect
    prunable = tokens[~fixed]
    for j, v in enumerate(kept):
        assert float(prunable[int(assign[v]), 0]) == 100.0 + extra + j
    assert int((assign >= 0).sum()) == len(kept)


def test_bench_qwen_video_layout_and_flops():
    """Qwen2.5-VL videos in ``vlprune bench``: S temporal slices, each laid out as one image; the placeholders,
    ``video_grid_thw`` and merged tokens agree with the real tower, and the ViT FLOPs keep both kinds of attention
    within a slice (what ``cu_seqlens`` does), i.e. S times one slice's."""
    from vlprune.presets import get_preset
    from vlprune.speed_flops import qwen_vit_flops
    from vlprune.speed_models import build, make_inputs, qwen_layout

    cpu = torch.device("cpu")
    bm = build("tiny-qwen-video", None, None, torch.float32, cpu)
    assert bm.layout.slices == 2 and bm.patches == 2 * 35 and bm.image_token_id == bm.model.config.video_token_id
    inputs = make_inputs(bm, 2, 16, cpu, torch.float32)
    assert "pixel_values" not in inputs and inputs["video_grid_thw"].tolist() == [[2, 10, 14]] * 2
    assert int((inputs["input_ids"][0] == bm.image_token_id).sum()) == 70
    assert inputs["mm_token_type_ids"].unique().tolist() == [0, 2]
    with torch.no_grad():
        merged = bm.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    assert sum(m.shape[0] for m in merged.pooler_output) == 2 * 70
    image = build("tiny-qwen", None, None, torch.float32, cpu)
    assert qwen_vit_flops(bm.shape, bm.layout) == 2 * qwen_vit_flops(image.shape, image.layout)
    preset = get_preset("qwen2.5-vl-7b-video")
    lay = qwen_layout(preset, (448, 448), slices=8)
    assert lay.patches == preset.visual_tokens == 2048
    assert qwen_vit_flops(preset, lay) == 8 * qwen_vit_flops(preset, qwen_layout(preset, (448, 448)))


def test_bench_tiny_qwen_video(tmp_path):
    """``vlprune bench --model tiny-qwen-video``: keep counts the video's merged tokens across its slices."""
    import json

    from typer.testing import CliRunner

    from vlprune.cli import app

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [
        "bench", "--model", "tiny-qwen-video", "--dtype", "fp32", "--device", "cpu", "--methods", "none,vispruner,fastv",
        "--keep", "16", "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "4-frame video of 40x56" in res.output
    report = json.loads(out.read_text())
    assert report["family"] == "qwen2_5_vl" and report["frames"] == 4 and report["visual_tokens"] == 70
    text = report["text_tokens"]
    full, vis, fastv = report["results"]
    assert full["llm_tokens"] == [70 + text] * 2 and vis["llm_tokens"] == [16 + text] * 2  # first, last layer
    assert fastv["llm_tokens"] == [70 + text, 16 + text]
