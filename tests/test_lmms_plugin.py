"""What of the lmms-eval plugin needs no lmms-eval, and the benchmark runner end to end on a tiny saved LLaVA.

The plugin itself runs inside the real lmms-eval in tests_lmms/ (``make test-lmms``, its own environment); the
fake lmms-eval module these tests once used is gone. Kept here: the pure request bookkeeping (batching order,
stop strings, kept counts per request), model_args parsing and the LMMS_EVAL_PLUGINS table, which the core
suite can check without lmms-eval installed.
"""
import json
from types import SimpleNamespace

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from vlprune.testing import tiny_llava

    t = tiny_llava(seed=3)
    path = tmp_path_factory.mktemp("tiny")
    t.model.save_pretrained(path)
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=t.tokenizer, patch_size=4, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    proc.save_pretrained(path)
    return path


def test_coerce_model_args():
    from vlprune.lmms_plugin_args import coerce

    assert coerce("64") == 64 and coerce("0.5") == 0.5 and coerce("True") is True and coerce("none") is None
    assert coerce("desap") == "desap"


def test_batches_never_mix_generation_settings_and_go_longest_first():
    from vlprune.lmms_plugin_batch import batches

    keys = [("a", 3), ("b", 9), ("a", 7), ("a", 7), ("b", 1), ("a", 1)]
    got = list(batches(keys, 2))
    assert got == [[2, 3], [0, 5], [1, 4]]  # group a: 7, 7 (request order), 3, 1; then group b
    assert sorted(i for b in got for i in b) == list(range(len(keys)))
    assert list(batches(keys, 1)) == [[2], [3], [0], [5], [1], [4]]
    assert list(batches([], 4)) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(batches(keys, 0))


def test_stop_strings_and_cut():
    from vlprune.lmms_plugin_batch import cut_at_stops, stop_strings

    assert stop_strings(None) == [] and stop_strings(".") == ["."] and stop_strings(["\n", "Q:"]) == ["\n", "Q:"]
    with pytest.raises(ValueError, match="'until' must be a string or a list of strings"):
        stop_strings(5)
    assert cut_at_stops("red. blue\nQ: x", ["\n", "."]) == "red"
    assert cut_at_stops("red", ["", "?"]) == "red"


def test_kept_per_request_splits_images_in_prompt_order():
    import torch

    from vlprune.lmms_plugin_batch import kept_per_request

    kept = SimpleNamespace(indices=[torch.arange(3), torch.arange(5), torch.arange(2)], grids=[(4, 4), (2, 3), (4, 4)])
    assert kept_per_request(kept, [1, 0, 2]) == [[(3, 16)], [], [(5, 6), (2, 16)]]
    with pytest.raises(RuntimeError, match="recorded 3 images for a batch of 2"):
        kept_per_request(kept, [1, 1])


def test_visuals_of_takes_pil_images_and_video_paths():
    from vlprune.lmms_plugin_batch import visuals_of

    img = Image.new("L", (4, 4))
    assert visuals_of(None, {}) == [] and visuals_of(lambda d: None, {}) == []
    one = visuals_of(lambda d: d["im"], {"im": img})
    assert len(one) == 1 and one[0].mode == "RGB"
    assert len(visuals_of(lambda d: [img, None, img], {})) == 2
    with pytest.raises(TypeError, match="audio tasks are not supported"):
        visuals_of(lambda d: [{"array": [0.0], "sampling_rate": 16000}], {})
    with pytest.raises(FileNotFoundError, match="video not found"):  # video paths are decoded (test_video_lmms.py)
        visuals_of(lambda d: ["absent-clip.mp4"], {})


def test_plugin_found_through_lmms_eval_plugin_table():
    import vlprune.models as m

    assert m.AVAILABLE_MODELS == {"vlprune": "VlpruneLMM"}


def test_runner_is_resumable_and_scored(saved_tiny, tmp_path):
    """POPE fixture folder -> answers written as they come; a rerun answers nothing new."""
    from vlprune.bench.runner import run_benchmark
    from vlprune.evaluation import load_model

    data = tmp_path / "pope"
    (data / "val2014").mkdir(parents=True)
    (data / "coco").mkdir()
    qs, labels = [], {"adversarial": [], "popular": [], "random": []}
    for i in range(4):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(data / "val2014" / name)
        qs.append({"question_id": i, "image": name, "text": "Is there a circle in the image?", "category": "random"})
        labels["random"].append({"question_id": i, "image": name, "text": "Is there a circle in the image?",
                                 "label": "yes" if i % 2 else "no"})
    (data / "llava_pope_test.jsonl").write_text("\n".join(json.dumps(q) for q in qs))
    for split, rows in labels.items():
        (data / "coco" / f"coco_pope_{split}.json").write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load_model(str(saved_tiny))
    calls = []
    report = run_benchmark(loaded, f"pope:{data}", ["random"], [4], tmp_path / "answers", batch_size=2,
                           max_new_tokens=2, progress=lambda label, n: calls.append((label, n)))
    assert set(report) >= {"full", "results"} and report["results"][0]["keep"] == 4
    assert 0.0 <= report["full"]["score"] <= 100.0 and report["full"]["n_missing"] == 0  # POPE F1, in %
    files = sorted((tmp_path / "answers" / "pope").rglob("*.jsonl"))
    assert [f.name for f in files] == ["full.jsonl", "random-4.jsonl"]
    assert all(len(f.read_text().splitlines()) == 4 for f in files)
    calls.clear()
    again = run_benchmark(loaded, f"pope:{data}", ["random"], [4], tmp_path / "answers", batch_size=2,
                          max_new_tokens=2, progress=lambda label, n: calls.append((label, n)))
    assert again["full"]["score"] == report["full"]["score"]
    assert calls == [("full", 4), ("random-4", 4)]  # everything was already answered
    assert all(len(f.read_text().splitlines()) == 4 for f in files)
