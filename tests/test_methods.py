"""Selection functions on random tensors: property tests, DeSAP eq. 3 against a loop, attention recompute."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import vlprune
from vlprune.methods import desap, prumerge, random_, visiondrop, visionzip, vispruner
from vlprune.methods.base import check_keep
from vlprune.ops import nearest_centre_merge


class FakeSource:
    """A SignalSource made of random tensors (no model)."""

    def __init__(self, b, n, seed, d=8, e=6, t=5):
        g = torch.Generator().manual_seed(seed)
        self.grid = (int(math.isqrt(n)), int(math.isqrt(n)))
        self._f = torch.randn(b, n, d, generator=g)
        self._a = torch.softmax(torch.randn(b, n, generator=g), -1)
        self._k = torch.randn(b, n, d, generator=g)
        self._cls = torch.randn(b, d, generator=g)
        self._dec = torch.randn(b, 1 + n, e, generator=g)
        self._text = torch.randn(b, t, e, generator=g)
        self._mask = torch.ones(b, t, dtype=torch.bool)
        self._mask[0, t - 2 :] = False
        self._eos = torch.randn(b, e, generator=g)
        self._keys = [int(x) for x in torch.randint(0, 10**6, (b,), generator=g)]

    def features(self):
        return self._f

    def cls_attention(self):
        return self._a

    def last_cls_attention(self):  # another map than cls_attention
        return self._a.flip(-1)

    def projected_features(self):  # a non-linear "projector"
        return torch.tanh(self._f) * 2

    def keys(self):
        return self._k

    def cls_feature(self):
        return self._cls

    def decoupled(self, mode):
        return self._dec

    def question(self):
        return self._text, self._mask, self._eos

    def has_question(self):
        return bool(self._mask.any())

    def image_keys(self):
        return self._keys


SELECTORS = {
    "desap": (desap.select, desap.DesapConfig()),
    "desap-nomerge": (desap.select, desap.DesapConfig(merge=False, fcma=False)),
    "vispruner": (vispruner.select, vispruner.VisPrunerConfig()),
    "visionzip-nocls": (visionzip.select, visionzip.VisionZipConfig(include_cls=False)),
    "random": (random_.select, random_.RandomConfig(seed=3)),
}


@pytest.mark.parametrize("name", SELECTORS)
@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), side=st.integers(2, 6), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_k_unique_in_range_spatial_deterministic(name, b, side, frac, seed):
    fn, cfg = SELECTORS[name]
    n = side * side
    k = max(1, min(n, int(round(frac * n))))
    src = FakeSource(b, n, seed)
    sel = fn(src, k, cfg)
    assert sel.features.shape[:2] == (b, k)
    idx = sel.indices
    assert idx.shape == (b, k)
    for row in idx:
        assert len(set(row.tolist())) == k and int(row.min()) >= 0 and int(row.max()) < n
        if not name.startswith("visionzip"):  # VisionZip appends contextual tokens after dominant ones
            assert torch.equal(row, torch.sort(row).values)
    again = fn(FakeSource(b, n, seed), k, cfg)
    assert torch.equal(again.indices, idx) and torch.equal(again.features, sel.features)


def test_visionzip_counts_cls_as_dominant_token():
    src = FakeSource(2, 36, 0)
    sel = visionzip.select(src, 16, visionzip.VisionZipConfig())
    assert sel.features.shape[1] == 16 and sel.indices.shape[1] == 15
    torch.testing.assert_close(sel.features[:, 0], src.cls_feature())
    # official split at 64 tokens: 54 dominant (53 patches + [CLS]) + 10 contextual
    sel = visionzip.select(FakeSource(1, 576, 0), 64, visionzip.VisionZipConfig())
    assert sel.features.shape[1] == 64 and sel.indices.shape[1] == 63


@pytest.mark.parametrize("plus", [False, True])
@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), side=st.integers(2, 7), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_prumerge_budget_extra_token_and_assign(plus, b, side, frac, seed):
    """keep tokens: the extra one (sum of the pruned patches weighted by [CLS] attention) + keep-1 distinct patches in
    raster order, each x_i + its weighted key-nearest neighbours; assign maps pruned patches to the extra token."""
    n = side * side
    keep = max(1, min(n - 1, int(round(frac * n))))
    src = FakeSource(b, n, seed)
    cfg = prumerge.PruMergePlusConfig() if plus else prumerge.PruMergeConfig()
    sel = (prumerge.select_plus if plus else prumerge.select)(src, keep, cfg)
    a, f = src.last_cls_attention(), src.features()
    assert sel.features.shape[:2] == (b, keep) and sel.indices.shape == (b, keep - 1)
    for i in range(b):
        kept = sel.indices[i]
        assert len(set(kept.tolist())) == keep - 1 and torch.equal(kept, torch.sort(kept).values)
        pruned = torch.ones(n, dtype=torch.bool)
        pruned[kept] = False
        torch.testing.assert_close(sel.features[i, 0], (a[i, pruned, None] * f[i, pruned]).sum(0))
        assert torch.equal(sel.assign[i][pruned], torch.zeros(int(pruned.sum()), dtype=torch.long))
        assert torch.equal(sel.assign[i][kept], torch.arange(1, keep))
        if not plus:  # PruMerge keeps the top of the last block's [CLS] attention
            assert set(kept.tolist()) == set(torch.topk(a[i], keep - 1).indices.tolist())
        if keep > 1:  # the first kept token, merged by hand
            j = int(kept[0])
            sim = F.normalize(src.keys()[i], dim=-1) @ F.normalize(src.keys()[i, j], dim=-1)
            sim[j] = -math.inf
            near = torch.topk(sim, min(32, n - 1)).indices
            torch.testing.assert_close(sel.features[i, 1], f[i, j] + (a[i, near, None] * f[i, near]).sum(0))


def test_prumerge_plus_samples_spread_uniformly_over_the_rest():
    src = FakeSource(1, 576, 0)
    sel = prumerge.select_plus(src, 129, prumerge.PruMergePlusConfig())
    top = set(torch.topk(src.last_cls_attention()[0], 32).indices.tolist())  # 128 patches: 32 top + 96 samples
    samples = sorted(set(sel.indices[0].tolist()) - top)
    assert len(samples) == 96 and top <= set(sel.indices[0].tolist())
    gaps = torch.diff(torch.tensor(samples))
    assert int(gaps.min()) >= 1 and int(gaps.max()) <= 2 * 544 // 96  # ~every 5.7th of the 544 left


def test_prumerge_config_validation():
    with pytest.raises(ValueError, match="order"):
        prumerge.PruMergeConfig(order="random")
    with pytest.raises(ValueError, match="uniform_share"):
        prumerge.PruMergePlusConfig(uniform_share=1.5)


def test_vispruner_important_tokens_are_top_cls_attention():
    src = FakeSource(1, 36, 7)
    sel = vispruner.select(src, 10, vispruner.VisPrunerConfig(important_ratio=0.5))
    top5 = set(torch.topk(src.cls_attention()[0], 5).indices.tolist())
    assert top5 <= set(sel.indices[0].tolist())


def loop_remove_duplicates(features, candidates, target, per_round):
    """VisPruner's duplicate removal for one image, written round by round over Python lists: the list keeps its
    given order (official: descending [CLS] attention), splits alternately into a/b, the ``r`` most redundant
    ``a`` go, and the next list is the surviving ``a`` (most redundant first) then ``b``, never re-sorted."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    remaining = list(candidates)
    while len(remaining) > target:
        a, b = remaining[0::2], remaining[1::2]
        r = min(per_round, len(remaining) - target, len(a))
        redundancy = [max(float(unit[i] @ unit[j]) for j in b) for i in a]
        by_redundancy = sorted(range(len(a)), key=lambda p: (-redundancy[p], p))
        remaining = [a[p] for p in by_redundancy[r:]] + b
    return remaining


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(2, 40), frac=st.floats(0.0, 1.0), per_round=st.integers(1, 9),
       seed=st.integers(0, 1000))
def test_vispruner_duplicate_removal_equals_round_by_round_loop(b, n, frac, per_round, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, n, 5, generator=g)
    m = max(1, int(n * 0.8))
    candidates = torch.rand(b, n, generator=g).argsort(-1)[:, :m]  # any order: the loop must keep it
    target = int(frac * (m - 1)) + 1
    got = vispruner.remove_duplicates(features, candidates, target, per_round)
    assert got.shape == (b, target)
    for row in range(b):
        want = loop_remove_duplicates(features[row], candidates[row].tolist(), target, per_round)
        assert got[row].tolist() == want


@pytest.mark.parametrize("keep,ratio,n_important", [(64, 0.75, 48), (16, 0.5, 8), (17, 0.5, 8), (10, 0.3, 3),
                                                    (9, 0.75, 6), (5, 1.0, 5), (5, 0.0, 0)])
def test_vispruner_important_count_is_floor_as_official(keep, ratio, n_important):
    assert vispruner.important_count(keep, ratio) == n_important


def test_vispruner_walks_the_rest_in_descending_cls_attention():
    """The diverse tokens come from the rest taken in descending [CLS]-attention order (official), not raster
    order: reversing the attention of the rest changes which near-duplicates are paired."""
    src = FakeSource(1, 36, 3)
    cfg = vispruner.VisPrunerConfig(important_ratio=0.25)
    order = torch.sort(src.cls_attention(), dim=-1, descending=True, stable=True).indices
    rest = order[:, 2:]
    want = vispruner.remove_duplicates(src.features(), rest, 6)
    sel = vispruner.select(src, 8, cfg)
    assert sel.indices[0].tolist() == sorted(order[0, :2].tolist() + want[0].tolist())


def loop_alignment(a, vs, s, qt, lam):
    """Eq. 3 written with explicit loops over patches i and text tokens j."""
    norm = lambda x: x / x.norm()
    a = [norm(r) for r in a]
    s = [norm(r) for r in s]
    vs, qt = norm(vs), norm(qt)
    d1, d2 = len(a), len(s)
    m = [[float(a[i] @ s[j]) for j in range(d2)] for i in range(d1)]
    alpha = [float(a[i] @ qt) for i in range(d1)]
    beta = [float(s[j] @ vs) for j in range(d2)]
    out = []
    for i in range(d1):
        total = 0.0
        for j in range(d2):
            mv = alpha[i] * math.exp(lam * beta[j] * m[i][j]) / (d1 * sum(math.exp(lam * beta[k] * m[i][k]) for k in range(d2)))
            mt = beta[j] * math.exp(lam * alpha[i] * m[i][j]) / (d2 * sum(math.exp(lam * alpha[k] * m[k][j]) for k in range(d1)))
            total += (mv + mt) * m[i][j]
        out.append(total / d2)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("lam", [0.1, 2.0])
def test_fine_grained_alignment_matches_loop_implementation(lam):
    src = FakeSource(2, 9, 5, t=5)
    text, mask, eos = src.question()
    dec = src.decoupled("qq")
    got = desap.fine_grained_alignment(dec[:, 1:], dec[:, 0], text, eos, mask, lam)
    for b in range(2):
        valid = mask[b]
        want = loop_alignment(dec[b, 1:].double(), dec[b, 0].double(), text[b][valid].double(), eos[b].double(), lam)
        torch.testing.assert_close(got[b].double(), want, rtol=1e-5, atol=1e-7)


def test_rank_and_prune_follows_eq5():
    task = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.2, 0.3]])
    sal = torch.tensor([[1.0, 0.0, 0.9, 0.1, 0.8, 0.0]])
    # top-2 by task: {0, 1}; then top-2 by saliency among the rest: {2, 4}
    assert desap.rank_and_prune(task, sal, 2, 2).tolist() == [[0, 1, 2, 4]]


def test_desap_without_question_uses_visual_cue_only():
    src = FakeSource(1, 16, 2)
    src._mask[:] = False
    sel = desap.select(src, 6, desap.DesapConfig(merge=False))
    want = torch.sort(torch.topk(src.last_cls_attention()[0], 6).indices).values  # the default salient_layer
    assert sel.indices[0].tolist() == want.tolist()


def test_nearest_centre_merge_is_average_of_clusters():
    feats = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    merged, assign = nearest_centre_merge(feats, torch.tensor([[0, 2]]))
    assert assign.tolist() == [[0, 0, 1, 1]]
    torch.testing.assert_close(merged, torch.tensor([[[0.95, 0.05], [0.05, 0.95]]]))
    all_kept, _ = nearest_centre_merge(feats, torch.arange(4).unsqueeze(0))
    assert torch.equal(all_kept, feats)


@pytest.mark.parametrize("feature_layer,which,block", [(-2, "feature", -2), (-2, "last", -1), (-3, "last", -1)])
def test_recomputed_cls_attention_equals_eager(tiny, pixels, feature_layer, which, block):
    """A_s read from the block that produced the features ("feature") or from the tower's last block ("last",
    DeSAP's salient_layer; for LLaVA's -2 the block that reads hidden_states[-2], for an earlier feature layer
    after running the blocks in between) equals that block's eager [CLS] row, head mean."""
    from vlprune.models.clip_signals import ClipVisionSignals

    model = tiny.model
    tower = model.model.vision_tower
    src = ClipVisionSignals(tower, pixels, feature_layer)
    model.set_attn_implementation({"vision_config": "eager"})
    try:
        with torch.no_grad():
            att = tower(pixel_values=pixels, output_attentions=True).attentions
    finally:
        model.set_attn_implementation({"vision_config": "sdpa"})
    got = src.cls_attention() if which == "feature" else src.last_cls_attention()
    torch.testing.assert_close(got, att[block][:, :, 0, 1:].mean(1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("salient", ["feature", "last"])
def test_desap_salient_layer_picks_the_map(salient):
    src = FakeSource(2, 36, 4)
    sel = desap.select(src, 8, desap.DesapConfig(task_ratio=0.0, merge=False, salient_layer=salient))
    a_s = src.cls_attention() if salient == "feature" else src.last_cls_attention()
    assert torch.equal(sel.indices, torch.sort(torch.topk(a_s, 8).indices).values)


def test_desap_projected_merge_averages_projected_tokens_of_the_same_clusters():
    src = FakeSource(2, 36, 4)
    vision = desap.select(src, 10, desap.DesapConfig(merge_space="vision"))
    proj = desap.select(src, 10, desap.DesapConfig(merge_space="projected"))
    assert not vision.projected and proj.projected
    assert torch.equal(proj.indices, vision.indices) and torch.equal(proj.assign, vision.assign)
    p = src.projected_features()
    for b in range(2):
        want = torch.stack([p[b][proj.assign[b] == c].mean(0) for c in range(10)])
        torch.testing.assert_close(proj.features[b], want)


@pytest.mark.parametrize("option", [{"salient_layer": "nope"}, {"merge_space": "llm"}])
def test_desap_option_errors(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        desap.DesapConfig(**option)


@pytest.mark.parametrize("mode", ["qq", "qk", "kk", "vv"])
def test_decoupled_attention_equals_explicit_softmax_and_qk_equals_the_block(tiny, pixels, mode):
    """Eq. 2 through the fused kernel equals the explicit map softmax(A B^T / sqrt(d)) V; with the ordinary pair
    ("qk") it is exactly the block's own eager self-attention output."""
    from vlprune.attention import decoupled_attention, split_heads
    from vlprune.models.clip_signals import ClipVisionSignals

    model = tiny.model
    tower = model.model.vision_tower
    src = ClipVisionSignals(tower, pixels, model.config.vision_feature_layer)
    attn = src.next_block.self_attn
    normed = src.next_block.layer_norm1(src.hidden_states[src.f])
    with torch.no_grad():
        got = decoupled_attention(attn, normed, mode)
        proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
        a, b = (split_heads(proj[c](normed), attn.num_heads) for c in mode)
        v = split_heads(attn.v_proj(normed), attn.num_heads)
        probs = torch.softmax(a @ b.transpose(-1, -2) * attn.head_dim**-0.5, dim=-1)
        want = attn.out_proj((probs @ v).transpose(1, 2).reshape(normed.shape))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if mode == "qk":
            model.set_attn_implementation({"vision_config": "eager"})
            try:
                block_out = attn(hidden_states=normed)[0]
            finally:
                model.set_attn_implementation({"vision_config": "sdpa"})
            torch.testing.assert_close(got, block_out, rtol=1e-5, atol=1e-5)


def test_recomputed_llm_attention_equals_eager(tiny):
    from vlprune.attention import decoder_attention_probs
    from vlprune.models.llava import LlavaAdapter

    model = tiny.model
    lm = model.model.language_model
    inputs = tiny.prompt_ids(["what color is the circle ?", "how many star are there in this image ?"])
    captured = {}
    hook = lm.layers[1].register_forward_pre_hook(
        lambda m, a, kw: captured.update(h=a[0] if a else kw["hidden_states"], kw=kw), with_kwargs=True)
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = lm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_attentions=True)
    finally:
        hook.remove()
        model.set_attn_implementation({"text_config": "sdpa"})
    cos, sin = captured["kw"]["position_embeddings"]
    q = torch.arange(inputs["input_ids"].shape[1]).expand(2, -1)
    got = decoder_attention_probs(lm.layers[1], captured["h"], cos, sin, captured["kw"]["attention_mask"], q,
                                  LlavaAdapter(model).rope())
    want = out.attentions[1]
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real.view(2, 1, -1, 1).expand_as(got) & real.view(2, 1, 1, -1).expand_as(got)],
                               want[real.view(2, 1, -1, 1).expand_as(want) & real.view(2, 1, 1, -1).expand_as(want)],
                               rtol=0, atol=1e-5)


# -- bad input ------------------------------------------------------------------------------------------
def test_keep_out_of_range(tiny):
    for bad in (0, -3, 17):
        with pytest.raises(ValueError, match="keep=.* out of range.*1 <= keep <= 16"):
            vlprune.apply(tiny.model, "random", bad)
    with pytest.raises(TypeError, match="keep must be an int"):
        check_keep(3.5, 16)


def test_unknown_method_and_option(tiny):
    with pytest.raises(ValueError, match="unknown pruning method 'nope'.*desap"):
        vlprune.apply(tiny.model, "nope", 4)
    with pytest.raises(TypeError, match="has no option.*'ratio'.*task_ratio"):
        vlprune.apply(tiny.model, "desap", 4, ratio=0.3, clip=tiny.clip, clip_tokenizer=tiny.clip_tokenizer)
    with pytest.raises(ValueError, match="task_ratio must be in"):
        desap.DesapConfig(task_ratio=1.5)


def test_unsupported_model_lists_supported():
    with pytest.raises(NotImplementedError, match="does not support Linear.*LlavaForConditionalGeneration"):
        vlprune.apply(torch.nn.Linear(2, 2), "random", 4)


def test_desap_without_clip_says_what_to_do(tiny):
    with pytest.raises(ValueError, match="DeSAP needs a CLIP text tower.*clip="):
        vlprune.apply(tiny.model, "desap", 4, processor=tiny.tokenizer)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        vlprune.apply(tiny.model, "desap", 4, processor=tiny.tokenizer, clip=tiny.clip)
    assert "forward" not in tiny.model.__dict__


def test_methods_listing():
    listed = vlprune.methods()
    assert {"desap", "vispruner", "visionzip", "fastv", "random"} <= set(listed)
    assert listed["desap"].defaults()["task_ratio"] == 0.5 and listed["fastv"].stage == "llm"


@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
@pytest.mark.parametrize("options", [{"merge_space": "projected"}, {"salient_layer": "last"}])
def test_desap_options_on_other_families_at_full_budget(family, options):
    """LLaVA-NeXT skips its projector for projected tiles; on Qwen both options are the features / map it has."""
    from vlprune.models import get_adapter
    from vlprune.testing import tiny_llava_next, tiny_qwen2_5_vl

    t = tiny_llava_next() if family == "llava_next" else tiny_qwen2_5_vl()
    sizes = [(20, 36), (30, 30)] if family == "llava_next" else [(32, 32), (24, 40)]
    im = t.images(sizes, seed=0)
    inputs = {**t.prompt_ids(["what color is the circle ?", "how many star are there ?"], im, [1, 1]), **im}
    kw = {"processor": t.tokenizer}
    if family == "llava_next":
        kw.update(clip=t.clip, clip_tokenizer=t.clip_tokenizer)
    with torch.no_grad():
        ref = t.model(**inputs).logits[:, -1]
        vlprune.apply(t.model, "desap", get_adapter(t.model).tokens_per_image(), **kw, **options)
        torch.testing.assert_close(t.model(**inputs).logits[:, -1], ref, rtol=0, atol=1e-5)
    vlprune.remove(t.model)


@pytest.mark.parametrize("p,s", [(7, 3), (40, 17), (100, 0)])
def test_shift_rope_equals_the_table_at_the_shifted_position(p, s):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from vlprune.positions import shift_rope

    rot = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256))
    x = torch.zeros(1, 1, 64)
    cos, sin = rot(x, torch.arange(128).unsqueeze(0))
    got = shift_rope(cos[:, p : p + 1], sin[:, p : p + 1], cos[:, s : s + 1], sin[:, s : s + 1], cos[:, :1])
    torch.testing.assert_close(got[0], cos[:, p - s : p - s + 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], sin[:, p - s : p - s + 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", [None, "bool", "additive"])
def test_position_causal_mask_orders_by_position(kind):
    from vlprune.positions import position_causal_mask, renumbered

    pos = renumbered(torch.tensor([[2, 3, 4]]), torch.tensor([[1, 2, 0]]), 6)  # visual run 2..4 reordered
    assert pos.tolist() == [[0, 1, 3, 4, 2, 5]]
    pad = torch.tensor([False, True, True, True, True, True])  # token 0 is padding
    base = {None: None, "bool": pad.view(1, 1, 1, 6).expand(1, 1, 6, 6),
            "additive": torch.zeros(1, 1, 6, 6).masked_fill(~pad.view(1, 1, 1, 6), -1e9)}[kind]
    m = position_causal_mask(base, pos, torch.float32)
    allowed = m if m.dtype == torch.bool else m > -1e8
    want = pos[0].view(1, 6) <= pos[0].view(6, 1)
    if kind is not None:
        want = want & pad.view(1, 6)
    assert torch.equal(allowed[0, 0], want)


def test_visiondrop_official_positions_refuse_several_images(tiny, pixels):
    inputs = tiny.prompt_ids(["what color is the circle ?"], n_images=2)
    vlprune.apply(tiny.model, "visiondrop", 3, positions="official")
    try:
        with pytest.raises(NotImplementedError, match="one image per sample"):
            with torch.no_grad():
                tiny.model(**inputs, pixel_values=pixels)
    finally:
        vlprune.remove(tiny.model)
    with pytest.raises(ValueError, match="positions"):
        visiondrop.VisionDropConfig(positions="renumbered")
