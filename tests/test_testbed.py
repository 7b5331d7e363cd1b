"""Tests of the testbed: scene generator, question validity, scoring, and a tiny build."""

from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest
import torch

from vlprune.testbed import FAMILIES, boxes_to_patch_mask, is_correct, load_split, normalize_answer, prompt_for
from vlprune.testbed import scenes
from vlprune.testbed.scenes import COUNT_WORDS, PLURAL, iter_train_samples


def _same(a, b) -> bool:
    return (a.question, a.answer, a.family, a.boxes, a.scene_id) == (b.question, b.answer, b.family, b.boxes,
                                                                       b.scene_id) and \
        np.array_equal(np.asarray(a.image), np.asarray(b.image))


# ----------------------------------------------------------------------- generator
def test_load_split_is_deterministic():
    a, b = load_split("val", 10), load_split("val", 10)
    assert all(_same(x, y) for x, y in zip(a, b))
    c, d = load_split("test", 5, seed=3), load_split("test", 5, seed=3)
    assert all(_same(x, y) for x, y in zip(c, d))
    # a prefix of a longer split is the shorter split
    assert all(_same(x, y) for x, y in zip(load_split("test", 3), load_split("test", 7)))


def test_splits_are_disjoint():
    ids = {
        "train": {s.scene_id for s in islice(iter_train_samples(), 20)},
        "val": {s.scene_id for s in load_split("val", 20)},
        "test": {s.scene_id for s in load_split("test", 20)},
        "test1": {s.scene_id for s in load_split("test", 20, seed=1)},
        "val1": {s.scene_id for s in load_split("val", 20, seed=1)},
        "test2": {s.scene_id for s in load_split("test", 20, seed=2)},
    }
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    # the id blocks themselves never meet (each split may hold up to 1e9 scenes)
    bases = [scenes._base(s, k) for s in ("train", "val", "test") for k in (None, 0, 1, 2)]
    assert len(set(b // scenes._BLOCK for b in bases)) == len(bases)
    imgs = [np.asarray(s.image) for s in load_split("val", 3) + load_split("test", 3)]
    assert not any(np.array_equal(imgs[i], imgs[j]) for i in range(6) for j in range(i + 1, 6))


def test_sample_fields_and_families():
    samples = load_split("test", 20)
    assert [s.family for s in samples] == [FAMILIES[i % 5] for i in range(20)]
    for s in samples:
        assert s.image.size == (96, 96) and s.image.mode == "RGB"
        assert s.answer == normalize_answer(s.answer) and " " not in s.answer
        assert s.answer in scenes.ANSWERS[s.family]
        for x0, y0, x1, y1 in s.boxes:
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    assert load_split("val", 2, image_size=192)[0].image.size == (192, 192)


def _find(obs, words: str):
    """Objects matching a referring expression ('triangle', 'red object', 'red triangle')."""
    w = words.split()
    if len(w) == 1:
        return [o for o in obs if o.shape == w[0]]
    if w[1] == "object":
        return [o for o in obs if o.color == w[0]]
    return [o for o in obs if o.color == w[0] and o.shape == w[1]]


def _check(s) -> None:
    obs = s.objects
    q = s.question
    boxes = {o.box for o in obs}
    assert set(s.boxes) <= boxes
    if s.family == "attribute":
        shape = re.fullmatch(r"What color is the (\w+) \?", q).group(1)
        hit = [o for o in obs if o.shape == shape]
        assert len(hit) == 1 and hit[0].color == s.answer and s.boxes == [hit[0].box]
    elif s.family == "identity":
        color = re.fullmatch(r"What shape is the (\w+) object \?", q).group(1)
        hit = [o for o in obs if o.color == color]
        assert len(hit) == 1 and hit[0].shape == s.answer and s.boxes == [hit[0].box]
    elif s.family == "existence":
        color, shape = re.fullmatch(r"Is there a (\w+) (\w+) \?", q).groups()
        hit = [o for o in obs if o.color == color and o.shape == shape]
        assert s.answer == ("yes" if hit else "no")
        if hit:
            assert len(s.boxes) == 1 and s.boxes[0] in {o.box for o in hit}
        else:  # adversarial negative: the colour or the shape is in the scene
            assert s.boxes == [] and any(o.color == color or o.shape == shape for o in obs)
    elif s.family == "counting":
        m = re.fullmatch(r"How many (\w+) objects are there \?", q)
        if m:
            hit = [o for o in obs if o.color == m.group(1)]
        else:
            plural = re.fullmatch(r"How many (\w+) are there \?", q).group(1)
            hit = [o for o in obs if PLURAL[o.shape] == plural]
        assert COUNT_WORDS[len(hit)] == s.answer and sorted(s.boxes) == sorted(o.box for o in hit)
    elif s.family == "spatial":
        m = re.fullmatch(r"Is the (\w+(?: \w+)?) (left or right of|above or below) the (\w+(?: \w+)?) \?", q)
        a, b = _find(obs, m.group(1)), _find(obs, m.group(3))
        assert len(a) == 1 and len(b) == 1 and a[0] is not b[0]
        (ax, ay), (bx, by) = a[0].center, b[0].center
        if m.group(2).startswith("left"):
            assert abs(ax - bx) >= scenes.MIN_GAP * 96
            assert s.answer == ("left" if ax < bx else "right")
        else:
            assert abs(ay - by) >= scenes.MIN_GAP * 96
            assert s.answer == ("above" if ay < by else "below")
        assert s.boxes == [a[0].box, b[0].box]
    else:  # pragma: no cover
        raise AssertionError(s.family)


def test_questions_match_their_scenes():
    samples = load_split("val", 150) + list(islice(iter_train_samples(), 100))
    for s in samples:
        _check(s)
        # objects never overlap, so a box names one object
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                assert scenes._overlaps(a.box, b.box, 0) is False


def test_answers_are_balanced():
    samples = load_split("test", 1000)
    for fam in FAMILIES:
        answers = [s.answer for s in samples if s.family == fam]
        counts = np.array([answers.count(a) for a in scenes.ANSWERS[fam]])
        if fam == "spatial":  # left/right and above/below are each balanced
            assert abs(counts[0] - counts[1]) < 0.35 * (counts[0] + counts[1])
            assert abs(counts[2] - counts[3]) < 0.35 * (counts[2] + counts[3])
        else:
            assert counts.min() > 0.5 * len(answers) / len(counts), (fam, counts)


def test_objects_are_grid_aligned():
    for size, s in ((96, load_split("val", 60)), (192, load_split("val", 20, image_size=192))):
        cell = size // scenes.CELLS
        for smp in s:
            for o in smp.objects:
                x0, y0, x1, y1 = o.box
                assert x0 % cell == y0 % cell == x1 % cell == y1 % cell == 0
                assert x1 - x0 == y1 - y0 == scenes.SIZES[o.size] * cell
            # one empty cell between objects, so no two objects touch
            for i, a in enumerate(smp.objects):
                for o in smp.objects[i + 1:]:
                    assert not scenes._overlaps(a.box, o.box, cell)
    small = [o for smp in load_split("val", 60) for o in smp.objects if o.size == "small"]
    assert small and all(boxes_to_patch_mask([o.box], 96, 12).sum() == 1 for o in small)


def test_prompt_and_vocabulary():
    assert prompt_for("What color is the circle ?") == "USER: <image>\nWhat color is the circle ? ASSISTANT:"
    vocab = set(scenes.vocabulary())
    for s in load_split("val", 50):
        assert set(s.question.lower().split()) <= vocab and s.answer in vocab


# ------------------------------------------------------------------------- scoring
def test_normalize_and_is_correct():
    assert normalize_answer("  Red.") == "red"
    assert normalize_answer("Yes, it is") == "yes"
    assert normalize_answer("...") == "" and normalize_answer("") == ""
    assert is_correct("Two objects", "two") and not is_correct("three", "two")
    assert not is_correct("", "")


def test_boxes_to_patch_mask():
    m = boxes_to_patch_mask([(0, 0, 8, 8)], 96, 12)
    assert m.shape == (144,) and m.dtype == torch.bool and m.sum() == 1 and m[0]
    m = boxes_to_patch_mask([(4, 4, 12, 12)], 96, 12)  # touches 4 patches
    assert m.nonzero().flatten().tolist() == [0, 1, 12, 13]
    m = boxes_to_patch_mask([(4, 4, 12, 12)], 96, 12, min_fraction=0.2)  # 25 % each: still 4
    assert m.sum() == 4
    m = boxes_to_patch_mask([(6, 6, 16, 16)], 96, 12, min_fraction=0.2)  # 4/64 of patch 0: dropped
    assert m.nonzero().flatten().tolist() == [1, 12, 13]
    assert boxes_to_patch_mask([], 96, 12).sum() == 0
    m = boxes_to_patch_mask([(90, 90, 96, 96), (0, 90, 3, 96)], (96, 96), 24)
    assert m.view(24, 24)[23, 23] and m.view(24, 24)[22, 0] and m.sum() == 6


# ------------------------------------------------------------------------ training
TINY = dict(patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
            text_heads=2, projection_dim=16, llm_width=32, llm_layers=2, llm_heads=2, llm_ffn=64,
            clip_batch=8, llava_batch=4, warmup=2)


def test_tiny_build_roundtrip(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel, LlavaForConditionalGeneration

    from vlprune.testbed.evaluate import evaluate
    from vlprune.testbed.train import TestbedSpec, build

    grid = 4
    res = build(tmp_path, grid=grid, clip_steps=3, llava_steps=3, progress=False, val_n=5,
                spec=TestbedSpec(**TINY), threads=None)
    assert {"time_clip_s", "time_llava_s", "time_total_s", "val"} <= set(res)
    assert 0.0 <= res["val"]["acc"] <= 1.0

    model = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    clip = CLIPModel.from_pretrained(tmp_path / "clip")
    clip_tok = AutoTokenizer.from_pretrained(tmp_path / "clip")
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"

    s = load_split("test", 2, image_size=grid * 8)
    enc = processor(images=[x.image for x in s], text=[prompt_for(x.question) for x in s], return_tensors="pt",
                    padding=True)
    assert ((enc["input_ids"] == model.config.image_token_id).sum(1) == grid * grid).all()
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output
    assert len(feats) == 2 and feats[0].shape == (grid * grid, 32)
    # the LLaVA vision tower is the trained CLIP vision tower
    for k, v in clip.vision_model.state_dict().items():
        assert torch.equal(v, model.model.vision_tower.state_dict()[k]), k

    # CLIP text pools at the EOS we appended
    t = clip_tok(["what color is the triangle ?"], return_tensors="pt")
    assert t["input_ids"][0, -1].item() == clip.config.text_config.eos_token_id != 2
    with torch.no_grad():
        out = clip.text_model(**t)
    assert torch.allclose(out.pooler_output[0], out.last_hidden_state[0, -1])
    # the reloaded model scores the same as the one build() evaluated
    again = evaluate(model, processor, load_split("val", 5, image_size=grid * 8))
    assert again == res["val"]
    # keeping every token through the features splice (compat.give_image_features) answers as the full model
    assert evaluate(model, processor, load_split("val", 5, image_size=grid * 8), keep_random=grid * grid) == again

    # the in-LLM methods' defaults for a 2-layer LLM travel with the checkpoint, and --set overrides them
    from vlprune.evaluation import effective_options, evaluate as evaluate_methods, load_model
    from vlprune.testbed.train import method_options

    loaded = load_model(str(tmp_path))
    assert loaded.options == method_options(TestbedSpec(**TINY)) and loaded.options["fastv"] == {"layer": 1}
    options = effective_options(loaded, {"asap": {"threshold": 0.8}})
    assert options["asap"] == {"layer": 1, "threshold": 0.8}
    report = evaluate_methods(loaded, load_split("val", 4, image_size=grid * 8), ["fastv", "visiondrop", "asap"],
                              [4], options=options)
    assert [r["method"] for r in report["results"]] == ["fastv", "visiondrop", "asap"]


def test_training_inputs_match_the_stock_llava_path():
    """The fast training path (own pixel conversion, cached vision features, inputs_embeds)
    computes exactly what LlavaForConditionalGeneration computes from the processor's output."""
    from vlprune.testbed.train import (TestbedSpec, conversation_text, embed_with_features, make_llava,
                                       make_processor, make_tokenizer, pixels, reply_labels, vision_features)

    spec = TestbedSpec(**TINY, grid=4)
    tok = make_tokenizer(padding_side="right")
    proc = make_processor(spec, tok)
    s = load_split("val", 3, image_size=spec.image_size)
    pix = pixels([x.image for x in s], proc.image_processor)
    ref = proc.image_processor(images=[x.image for x in s], return_tensors="pt")["pixel_values"]
    assert torch.allclose(pix, ref, atol=1e-6)

    from transformers import CLIPVisionConfig

    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=spec.image_size, patch_size=8)
    torch.manual_seed(0)
    model = make_llava(spec, len(tok), vcfg).eval()
    turns = [[(x.question, x.answer), ("What color is the ring ?", "red")] for x in s]
    enc = proc(images=[x.image for x in s], text=[conversation_text(t) for t in turns], return_tensors="pt",
               padding=True)
    ids = tok([conversation_text(t, spec.grid ** 2) for t in turns], return_tensors="pt", padding=True)
    assert torch.equal(ids["input_ids"], enc["input_ids"])
    labels, first = reply_labels(enc["input_ids"], enc["attention_mask"], tok)
    for r, t in enumerate(turns):
        words = tok.convert_ids_to_tokens(labels[r][labels[r] >= 0].tolist())
        assert words == [t[0][1], "</s>", "red", "</s>"]
        assert tok.convert_ids_to_tokens(int(enc["input_ids"][r, first[r]])) == t[0][1]
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=enc["pixel_values"], labels=labels)
        x = embed_with_features(model, enc["input_ids"], vision_features(model, pix))
        out = model(inputs_embeds=x, attention_mask=enc["attention_mask"], labels=labels)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)


def test_clip_content_words_are_in_the_vocabulary():
    """The FILIP term averages over these words: all known, no specials."""
    from vlprune.testbed.train import content_word_ids, make_clip_tokenizer

    tok = make_clip_tokenizer()
    ids = content_word_ids(tok)
    assert len(ids) == len(set(ids.tolist())) and (ids > 4).all()  # no specials, no unknowns
    assert tok.unk_token_id not in ids.tolist()


class _FeaturePool:
    """Stand-in for ConversationPool's cached tensors: features that encode (colour, shape) or background."""

    def __init__(self, n: int, patches: int, width: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n_col, n_shp = 6, 5
        codes = torch.randn(n_col + n_shp + 1, width, generator=g)
        self.targets = torch.full((n, patches, 2), -1, dtype=torch.long)
        obj = torch.rand(n, patches, generator=g) < 0.3
        self.targets[..., 0] = torch.where(obj, torch.randint(n_col, (n, patches), generator=g), -1)
        self.targets[..., 1] = torch.where(obj, torch.randint(n_shp, (n, patches), generator=g), -1)
        col, shp = self.targets[..., 0], self.targets[..., 1]
        self.feats = torch.where(obj[..., None], codes[col.clamp(min=0)] + codes[n_col + shp.clamp(min=0)],
                                 codes[-1]) + 0.1 * torch.randn(n, patches, width, generator=g)

    def __len__(self) -> int:
        return len(self.feats)


def test_projector_alignment_learns_object_words_and_background():
    """align_projector drives every patch's projected token to its object's colour and shape word
    embeddings, and background patches to the 'no object' class (logit 0 beats every word)."""
    from transformers import CLIPVisionConfig

    from vlprune.testbed.train import (TestbedSpec, align_projector, alignment_loss, attribute_word_ids, make_llava,
                                       make_tokenizer)

    spec = TestbedSpec(**TINY, grid=4)
    tok = make_tokenizer()
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=spec.image_size, patch_size=8)
    torch.manual_seed(0)
    model = make_llava(spec, len(tok), vcfg)
    pool = _FeaturePool(64, spec.grid ** 2, 32)
    words = attribute_word_ids(tok)
    llm_before = {k: v.clone() for k, v in model.model.language_model.layers.state_dict().items()}
    before = alignment_loss(model, pool.feats, pool.targets, words).item()
    after = align_projector(model, spec, pool, words, steps=400, batch_size=16)
    assert after < 0.2 * before
    with torch.no_grad():
        img = model.model.multi_modal_projector(pool.feats)
        emb = model.get_input_embeddings().weight
        for k, ids in enumerate(words):
            logits = torch.cat([img @ emb[ids].T, torch.zeros_like(img[..., :1])], -1)
            target = torch.where(pool.targets[..., k] < 0, len(ids), pool.targets[..., k])
            assert (logits.argmax(-1) == target).float().mean() > 0.95
    for k, v in model.model.language_model.layers.state_dict().items():  # only projector + embeddings move
        assert torch.equal(v, llm_before[k]), k


@pytest.mark.parametrize("background", [0.0, 0.3, 1.0])
def test_pool_batch_background_curriculum(background):
    """Every object patch is kept, background patches at the given share; the conversation has exactly one
    <image> token per kept patch, in the order the kept features are scattered."""
    from vlprune.testbed.train import IMAGE_ID, ConversationPool, TestbedSpec, make_tokenizer

    spec = TestbedSpec(**TINY, grid=4, turns=2)
    tok = make_tokenizer(padding_side="right")
    pool = ConversationPool.__new__(ConversationPool)
    pool.spec = spec
    pool.samples = [load_split("train", 6, image_size=spec.image_size)[i] for i in range(6)]
    fake = _FeaturePool(6, spec.grid ** 2, 8)
    pool.feats, pool.targets = fake.feats, fake.targets
    ids, mask, labels, first, feats, targets, keep = pool.batch(0, 4, tok, background)
    obj = targets[..., 0] >= 0
    assert (keep | ~obj).all()                                   # objects always kept
    assert ((ids == IMAGE_ID).sum(1) == keep.sum(1)).all()
    if background == 1.0:
        assert keep.all()
    elif background == 0.0:
        assert torch.equal(keep, obj)
    assert feats[keep].shape == (int(keep.sum()), 8)


def test_shipped_checkpoint_was_built_with_the_default_spec():
    """`vlprune testbed build` (TestbedSpec defaults) is the recipe of the bundled checkpoint."""
    import json
    from dataclasses import asdict

    from vlprune.testbed import checkpoint_dir
    from vlprune.testbed.train import TestbedSpec, method_options

    record = json.loads((checkpoint_dir() / "testbed_build.json").read_text())
    spec = asdict(TestbedSpec())
    added = set(spec) - set(record["spec"])  # options added after the build must default to off
    assert added <= {"decoupled_token_loss", "decoupled_global_loss"}
    assert all(spec[k] == 0.0 for k in added)
    assert record["spec"] == {k: v for k, v in spec.items() if k not in added}
    assert record["val"]["n"] == TestbedSpec().val_n
    options = json.loads((checkpoint_dir() / "method_options.json").read_text())
    assert options == method_options(TestbedSpec())


def test_position_loss_reads_rows_and_columns():
    """The patch-position term is ~0 when the features name each patch's row and column, and large when they
    name the transposed grid (rows and columns swapped)."""
    from vlprune.testbed.train import position_loss

    grid = 5
    p = torch.arange(grid * grid)
    eye = torch.eye(grid) * 30

    def features(row, col):
        return torch.cat([eye[row], eye[col]], -1).expand(3, -1, -1)

    head = torch.nn.Linear(2 * grid, 2 * grid, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2 * grid))
    assert position_loss(features(p // grid, p % grid), head, grid) < 1e-6
    assert position_loss(features(p % grid, p // grid), head, grid) > 5


def _tiny_clip_batch():
    """A tiny untrained CLIP, its tokenizer, four captions and two random images (the clip_losses tests)."""
    from vlprune.testbed.train import TestbedSpec, make_clip, make_clip_tokenizer, make_tokenizer

    spec = TestbedSpec(**TINY, grid=4)
    torch.manual_seed(0)
    clip = make_clip(spec, len(make_tokenizer()))
    tok = make_clip_tokenizer()
    text = tok(["a red circle", "a blue square", "a red square", "a blue circle"], padding=True,
               return_tensors="pt")
    return spec, clip, tok, text, torch.randn(2, 3, spec.image_size, spec.image_size)


def test_clip_position_term_trains_the_blocks_below_the_feature_layer():
    """clip_losses adds the position term on hidden state -2 (what LLaVA takes): it raises the loss, and its
    gradient reaches the head and every block below that layer but not the last block."""
    from vlprune.testbed.train import clip_losses, content_word_ids, position_loss

    spec, clip, tok, text, pix = _tiny_clip_batch()
    head = torch.nn.Linear(spec.vision_width, 2 * spec.grid)
    content = content_word_ids(tok)
    args = (clip, pix, text["input_ids"], text["attention_mask"], content, 1.0)
    base, _ = clip_losses(*args)
    with_position, _ = clip_losses(*args, head, 0.5)
    hs = clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states
    expected = base + 0.5 * position_loss(hs[-2][:, 1:], head, spec.grid)
    assert torch.allclose(with_position, expected, atol=1e-5)
    clip.zero_grad()
    position_loss(clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states[-2][:, 1:],
                  head, spec.grid).backward()
    layers = clip.vision_model.encoder.layers
    assert head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[0].parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in layers[-1].parameters())


def test_clip_decoupled_term_trains_the_decoupled_qq_patches():
    """The issue-22 experiment: ``decoupled_weight`` adds a token-wise term on DeSAP's decoupled q-q patches of the
    last block (eq. 2): the loss grows by exactly that term, and its gradient reaches the block's q and v
    projections but not its k projection or MLP (the q-q map uses no keys, and eq. 2 has no MLP)."""
    from vlprune.models.clip_signals import decoupled_joint
    from vlprune.testbed.train import clip_losses, content_word_ids

    spec, clip, tok, text, pix = _tiny_clip_batch()
    args = (clip, pix, text["input_ids"], text["attention_mask"], content_word_ids(tok))
    plain, _ = clip_losses(*args, 0.0)
    with_decoupled, _ = clip_losses(*args, 0.0, decoupled_weight=1.0)
    both, _ = clip_losses(*args, 1.0, decoupled_weight=1.0)
    assert with_decoupled > plain and both > with_decoupled
    clip.zero_grad()
    (with_decoupled - plain).backward()
    last = clip.vision_model.encoder.layers[-1]
    q_grad = last.self_attn.q_proj.weight.grad.abs().sum()
    assert q_grad > 0 and last.self_attn.v_proj.weight.grad.abs().sum() > 0
    for module in (last.self_attn.k_proj, last.mlp):  # the shared terms cancel in the difference (float noise at most)
        assert all(p.grad is None or p.grad.abs().sum() <= 1e-6 * q_grad for p in module.parameters())
    hs = clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states
    joint = decoupled_joint(hs[-2], block=last, post_layernorm=clip.vision_model.post_layernorm,
                            projection=clip.visual_projection, mode="qq")
    assert joint.shape == (2, 1 + spec.grid ** 2, spec.projection_dim)


def test_stage_1b_trains_only_the_last_block_and_keeps_layer_minus_2():
    """retune_last_block changes the last block, post-LN and visual projection (and the text tower only when
    asked), never the blocks below: the hidden state LLaVA reads (-2) stays bit-identical."""
    from dataclasses import replace

    from vlprune.testbed.clip_stage import retune_last_block
    from vlprune.testbed.train import make_processor, make_tokenizer

    spec, clip, tok, _, pix = _tiny_clip_batch()
    spec = replace(spec, clip_batch=4, warmup=1)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    with torch.no_grad():
        feats = clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states[-2]
    out = retune_last_block(clip, spec, tok, make_processor(spec, make_tokenizer()).image_processor, 2, 1e-2, 1.0)
    assert out["retune_loss"] is not None
    last = f"vision_model.encoder.layers.{spec.vision_layers - 1}."
    moved = {k for k, v in clip.state_dict().items() if not torch.equal(v, before[k])}
    trained = (last, "vision_model.post_layernorm.", "visual_projection.")
    assert moved and all(k.startswith(trained) for k in moved)
    assert any(k.startswith(last + "self_attn.q_proj") for k in moved)
    with torch.no_grad():
        assert torch.equal(clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states[-2], feats)
    assert all(p.requires_grad for p in clip.parameters())  # restored for whoever trains it next


def test_bundled_towers_are_the_bundled_clip():
    """Every bundled LLaVA (testbed, testbed-deep, both towers of testbed-video) carries exactly the bundled CLIP's
    vision model, the one DeSAP's text side (``clip_dir()``) was trained with."""
    from safetensors.torch import load_file

    from vlprune.testbed import checkpoint_dir, clip_dir, deep_checkpoint_dir, video_checkpoint_dir

    clip = {k[len("vision_model."):]: v for k, v in load_file(clip_dir() / "model.safetensors").items()
            if k.startswith("vision_model.")}
    towers = [(checkpoint_dir(), "vision_tower."), (deep_checkpoint_dir(), "vision_tower."),
              (video_checkpoint_dir(), "image_tower."), (video_checkpoint_dir(), "video_tower.")]
    for folder, prefix in towers:
        weights = load_file(folder / "model.safetensors")
        tower = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        assert tower.keys() == clip.keys(), folder
        assert all(torch.equal(tower[k], clip[k]) for k in clip), (folder, prefix)


def test_clip_decoupled_global_term_is_infonce_of_the_decoupled_cls_row():
    """``decoupled_global`` adds exactly the global InfoNCE of the last block's decoupled [CLS] row (DeSAP's v_s)
    against the B captions and B hard negatives."""
    import torch.nn.functional as F

    from vlprune.models.clip_signals import decoupled_joint
    from vlprune.testbed.train import clip_losses, content_word_ids

    spec, clip, tok, text, pix = _tiny_clip_batch()
    args = (clip, pix, text["input_ids"], text["attention_mask"], content_word_ids(tok), 0.0)
    with torch.no_grad():
        plain, _ = clip_losses(*args)
        with_global, _ = clip_losses(*args, decoupled_global=0.5)
        hs = clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states
        v_s = decoupled_joint(hs[-2], block=clip.vision_model.encoder.layers[-1],
                              post_layernorm=clip.vision_model.post_layernorm, projection=clip.visual_projection,
                              mode="qq")[:, 0]
        cap = clip.text_projection(clip.text_model(input_ids=text["input_ids"],
                                                   attention_mask=text["attention_mask"]).pooler_output)
        logits = clip.logit_scale.exp().clamp(max=100) * F.normalize(v_s, dim=-1) @ F.normalize(cap, dim=-1).T
        target = torch.arange(2)
        nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :2].T, target)) / 2
    torch.testing.assert_close(with_global, plain + 0.5 * nce)
