"""The lmms-eval plugin and the benchmark runner, end to end on a tiny saved LLaVA (lmms-eval itself faked)."""
import json
import sys
import types

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


@pytest.fixture()
def fake_lmms_eval(monkeypatch):
    """The two names the plugin imports from lmms-eval (its real API: lmms base class + register_model)."""
    registry = {}
    api = types.ModuleType("lmms_eval.api")
    model_mod = types.ModuleType("lmms_eval.api.model")
    reg_mod = types.ModuleType("lmms_eval.api.registry")

    class lmms:  # noqa: N801  (lmms-eval's name)
        def __init__(self):
            self.task_dict = {}

    def register_model(*names):
        def wrap(cls):
            for n in names:
                registry[n] = cls
            return cls
        return wrap

    model_mod.lmms = lmms
    reg_mod.register_model = register_model
    for name, mod in {"lmms_eval": types.ModuleType("lmms_eval"), "lmms_eval.api": api,
                      "lmms_eval.api.model": model_mod, "lmms_eval.api.registry": reg_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "vlprune.lmms_plugin", raising=False)
    return registry


class Request:
    def __init__(self, *args):
        self.args = args


def test_coerce_model_args(fake_lmms_eval):
    from vlprune.lmms_plugin_args import coerce

    assert coerce("64") == 64 and coerce("0.5") == 0.5 and coerce("True") is True and coerce("none") is None
    assert coerce("desap") == "desap"


def test_plugin_generates_with_pruning(fake_lmms_eval, saved_tiny):
    from vlprune.lmms_plugin import VlpruneLMM
    import vlprune

    assert fake_lmms_eval["vlprune"] is VlpruneLMM
    lm = VlpruneLMM(pretrained=str(saved_tiny), method="vispruner", keep="5", device="cpu", dtype="float32",
                    important_ratio="0.6")
    img = Image.new("RGB", (16, 16), (200, 30, 30))
    lm.task_dict = {"toy": {"test": {0: {"img": img}, 1: {"img": img}}}}
    reqs = [Request("what color is the circle ?", {"until": ["."], "max_new_tokens": 3}, lambda d: [d["img"]], i,
                    "toy", "test") for i in (0, 1)]
    out = lm.generate_until(reqs)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    kept = vlprune.last_selection(lm.loaded.model)
    assert kept.method == "vispruner" and len(kept.indices[0]) == 5
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood(reqs)


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
