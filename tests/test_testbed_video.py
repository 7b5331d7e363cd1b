"""The video testbed: clip generation (determinism, splits, balance, questions that need the frames), its pixel
pipeline against the image testbed's processor, object recall over frames, and the bundled checkpoint (answers at
full budget; every encoder-side method prunes its clips to 4 [CLS] + keep tokens)."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vlprune
from vlprune.registry import get_method, methods
from vlprune.testbed import video_scenes as vs

ENCODER_METHODS = sorted(m for m, spec in methods().items() if spec.families is None and spec.plan is None)


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, n))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def balance_samples():
    return vs.load_video_split("val", 250)


@pytest.fixture(scope="module")
def bundled():
    from vlprune.evaluation import load_model

    return load_model("testbed-video")


def test_clips_are_deterministic_per_id():
    a, b = vs.make_video_sample(123, "frames"), vs.make_video_sample(123, "frames")
    assert (a.question, a.answer, a.boxes) == (b.question, b.answer, b.boxes)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.frames, b.frames))
    c = vs.make_video_sample(124, "frames")
    assert not np.array_equal(np.asarray(a.frames[0]), np.asarray(c.frames[0]))
    assert len(a.frames) == vs.FRAMES and a.frames[0].size == (96, 96)


def test_splits_are_disjoint_and_seeded():
    ids = {(split, seed): {s.scene_id for s in vs.load_video_split(split, 5, seed)}
           for split in ("train", "val", "test") for seed in (None, 0, 1)}
    keys = list(ids)
    for i, k in enumerate(keys):
        for other in keys[i + 1:]:
            assert not ids[k] & ids[other], (k, other)
    assert [s.family for s in vs.load_video_split("test", 5)] == list(vs.FAMILIES)
    with pytest.raises(ValueError, match="split must be"):
        vs.load_video_split("dev", 1)


def test_answers_are_balanced(balance_samples):
    for fam in vs.FAMILIES:
        counts = Counter(s.answer for s in balance_samples if s.family == fam)
        assert set(counts) == set(vs.ANSWERS[fam]), (fam, counts)
        expected = 50 / len(vs.ANSWERS[fam])
        assert max(counts.values()) <= 2.2 * expected, (fam, counts)


def test_every_question_needs_more_than_one_frame(balance_samples):
    """The asked-about event spans frames: no single frame shows the answer's evidence alone."""
    for s in balance_samples:
        roles = {t.role: t for t in s.tracks}
        others = [t for t in s.tracks if t.role in ("static", "mover", "changer", "vanisher")]
        if s.family in ("appeared", "when"):
            t = roles["appearer"]
            assert t.boxes[0] is None and t.boxes[-1] is not None
            assert vs.ORDINALS[t.present()[0]] == s.answer or s.family == "appeared"
        elif s.family == "moving":
            t = roles["mover"]
            assert len(set(t.boxes)) == vs.FRAMES and t.colors[0] == s.answer
            assert all(len({b for b in o.boxes if b}) == 1 for o in others if o.role != "mover")
        elif s.family == "changed":
            t = roles["changer"]
            assert t.colors[0] != t.colors[-1] and t.shape == s.answer
            assert all(len({c for c in o.colors if c}) == 1 for o in s.tracks if o.role != "changer")
        else:
            assert sum(bool(b) for b in s.boxes) == vs.scenes.COUNT_WORDS.index(s.answer)
        pairs = [p for t in s.tracks for p in t.pairs()]
        assert len(pairs) == len(set(pairs))  # every (colour, shape) names one object


def test_pixels_equal_the_image_testbeds_per_frame():
    from transformers import AutoProcessor

    from vlprune.testbed import checkpoint_dir
    from vlprune.testbed.video_model import VideoTestbedProcessor, make_video_tokenizer, spec_image_processor

    image_proc = AutoProcessor.from_pretrained(str(checkpoint_dir()))
    proc = VideoTestbedProcessor(make_video_tokenizer(), spec_image_processor())
    clips = vs.load_video_split("val", 2)
    enc = proc(text=[s.prompt for s in clips], videos=[s.frames for s in clips])
    assert enc["pixel_values_videos"].shape == (2, vs.FRAMES, 3, 96, 96)
    for b, s in enumerate(clips):
        ref = image_proc.image_processor(images=s.frames, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(enc["pixel_values_videos"][b], ref, atol=1e-5, rtol=0)
    video_id = proc.tokenizer.convert_tokens_to_ids("<video>")
    assert (enc["input_ids"] == video_id).sum(1).tolist() == [vs.FRAMES * 145] * 2
    # the image testbed's words keep their ids
    assert proc.tokenizer.get_vocab().items() >= image_proc.tokenizer.get_vocab().items()


def test_object_recall_counts_patches_over_frames():
    from vlprune.evaluation import object_recall

    n = 144
    sample = SimpleNamespace(frames=[None] * 4, boxes=[[(0, 0, 16, 16)], [], [(88, 88, 96, 96)], []])
    # the object: patches 0, 1, 12, 13 of frame 0 and patch 143 of frame 2 (5 patches)
    on = [0, 1, 12, 13, 2 * n + 143]
    kept = SimpleNamespace(indices=[torch.tensor([0, 13, 5, n + 0, 2 * n + 143, 3 * n + 143])], assign=None)
    strict, merged = object_recall([sample], kept, 12, 96)
    assert strict == pytest.approx([3 / len(on)]) and merged == strict
    empty = SimpleNamespace(frames=[None] * 4, boxes=[[], [], [], []])
    assert object_recall([empty], kept, 12, 96) == ([], [])


def test_video_testbed_shares_the_testbed_clip(bundled, tmp_path):
    """A video testbed has no clip/ of its own: DeSAP reads the image testbed's CLIP, bundled or rebuilt (a copy
    at another path), unless --clip names another."""
    import shutil

    from vlprune.evaluation import load_model
    from vlprune.testbed import clip_dir, video_checkpoint_dir

    assert bundled.clip == str(clip_dir())
    copy = tmp_path / "video"
    shutil.copytree(video_checkpoint_dir(), copy)
    assert load_model(str(copy)).clip == str(clip_dir())
    assert load_model(str(copy), clip="some/clip").clip == "some/clip"


@pytest.mark.slow
def test_bundled_checkpoint_answers_val_at_full_budget(bundled):
    from vlprune.evaluation import answer
    from vlprune.testbed import is_correct

    samples = vs.load_video_split("val", 20)
    preds = answer(bundled, samples, batch_size=10)
    assert sum(is_correct(p, s.answer) for p, s in zip(preds, samples)) >= 16


def _llm_tokens(model, inputs) -> int:
    """Sequence length the language model runs on (its input hidden states)."""
    return model(**inputs, output_hidden_states=True).hidden_states[0].shape[1]


@torch.no_grad()
@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_encoder_methods_give_the_llm_four_cls_plus_keep(bundled, method):
    from vlprune.evaluation import method_kwargs

    model, proc = bundled.model, bundled.processor
    proc.tokenizer.padding_side = "left"
    sample = vs.load_video_split("val", 1)[0]
    inputs = proc(text=[sample.prompt], videos=[sample.frames])
    n_text = int((inputs["input_ids"] != model.config.video_token_id).sum())
    assert _llm_tokens(model, inputs) == n_text + vs.FRAMES * 145
    keep = 64
    vlprune.apply(model, method, keep, **method_kwargs(method, bundled))
    try:
        n = _llm_tokens(model, inputs)
        kept = vlprune.last_selection(model)
    finally:
        vlprune.remove(model)
    assert n == n_text + vs.FRAMES + keep, (method, n - n_text)
    assert len(kept.indices) == 1 and int((kept.indices[0] >= 0).sum()) <= keep
    assert get_method(method).plan is None


def test_cli_video_bench_needs_a_video_model():
    from typer.testing import CliRunner

    from vlprune.cli import app
    from vlprune.testbed import checkpoint_dir

    res = CliRunner().invoke(app, ["eval", "--model", str(checkpoint_dir()), "--bench", "testbed-video",
                                   "--methods", "random", "--keep", "64", "--limit", "2"])
    assert res.exit_code == 2 and "--model testbed-video" in res.output, res.output


@pytest.mark.slow
def test_cli_eval_prints_the_video_table():
    from typer.testing import CliRunner

    from vlprune.cli import app

    res = CliRunner().invoke(app, ["eval", "--bench", "testbed-video", "--methods", "random", "--keep", "64",
                                   "--limit", "5", "--split", "val"])
    assert res.exit_code == 0, res.output
    for word in ("testbed-video", *vs.FAMILIES, "obj. recall", "TFLOPs", "random"):
        assert word in res.output


@pytest.mark.slow
def test_build_video_writes_a_loadable_checkpoint_and_its_record(tmp_path):
    import json

    from vlprune.evaluation import load_model
    from vlprune.testbed.video_train import BUILD_FILE, VideoSpec, build_video

    spec = VideoSpec(steps=2, pool=8, val_n=5, val_probe=0)
    result = build_video(tmp_path, spec=spec, threads=1)
    record = json.loads((tmp_path / BUILD_FILE).read_text())
    assert record["spec"]["steps"] == 2 and record["val"]["n"] == 5
    assert record["time_total_s"] > 0 and record["cpu_total_s"] > 0 and result["val"] == record["val"]
    loaded = load_model(str(tmp_path))
    assert type(loaded.processor).__name__ == "VideoTestbedProcessor" and loaded.options  # method_options copied
