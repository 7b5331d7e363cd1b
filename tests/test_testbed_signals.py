"""`vlprune testbed signals`: the AUC / recall arithmetic, and that each signal is the one the method reads."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlprune.testbed.signals import patch_auc, signal_report, topk_recall


def brute_auc(scores: list[float], target: list[bool]) -> float:
    pos = [s for s, t in zip(scores, target) if t]
    neg = [s for s, t in zip(scores, target) if not t]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30).filter(
    lambda xs: any(t for _, t in xs) and not all(t for _, t in xs)))
def test_auc_matches_pairwise_count(pairs):
    scores = [float(s) for s, _ in pairs]  # few distinct values: many ties
    target = [t for _, t in pairs]
    got = patch_auc(torch.tensor([scores]), torch.tensor([target]))
    assert got.item() == pytest.approx(brute_auc(scores, target))


def test_auc_known_cases():
    target = torch.tensor([[True, True, False, False, False]])
    assert patch_auc(torch.tensor([[5.0, 4, 3, 2, 1]]), target).item() == 1.0
    assert patch_auc(torch.tensor([[1.0, 2, 3, 4, 5]]), target).item() == 0.0
    assert patch_auc(torch.ones(1, 5), target).item() == 0.5
    # one positive above all three negatives, one in the middle: (3 + 1.5... ) -> (3 + 2) / 6
    assert patch_auc(torch.tensor([[9.0, 2.5, 3, 2, 1]]), target).item() == pytest.approx(5 / 6)
    assert patch_auc(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool)).isnan().all()


def test_topk_recall():
    scores = torch.tensor([[5.0, 1, 4, 3, 2], [1.0, 2, 3, 4, 5]])
    target = torch.tensor([[True, True, False, False, False], [True, False, False, False, True]])
    assert topk_recall(scores, target, 2).tolist() == [0.5, 0.5]
    assert topk_recall(scores, target, 5).tolist() == [1.0, 1.0]


def test_report_synthetic_signal_known_auc():
    """A signal that is the target plus a known offset ranks perfectly; its negation ranks worst; chance row."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(20, 144, generator=g) < 0.05
    target[:, 0] = True
    perfect = target.float() + 0.1 * torch.rand(20, 144, generator=g)
    rep = signal_report({"perfect": perfect, "inverted": -perfect}, target, (16,))
    rows = {r["signal"]: r for r in rep["rows"]}
    assert rows["perfect"]["auc"] == 1.0 and rows["inverted"]["auc"] == 0.0
    assert rows["perfect"]["recall@16"] == 1.0  # at most ~16 on-object patches per row here
    assert rep["chance"]["recall@16"] == pytest.approx(16 / 144)


@pytest.fixture(scope="module")
def measured():
    from vlprune.evaluation import load_model
    from vlprune.testbed import load_split
    from vlprune.testbed.signals import compute_signals

    loaded = load_model("testbed")
    samples = [s for s in load_split("val", 6) if s.boxes][:3]
    scores, target = compute_signals(loaded, samples, batch_size=3)
    return loaded, samples, scores, target


def _kept(loaded, samples, method, keep, **options):
    import vlprune
    from vlprune.evaluation import method_kwargs

    out = []
    for s in samples:
        inputs = loaded.processor(images=s.image, text=s.prompt, return_tensors="pt")
        with vlprune.pruned(loaded.model, method, keep, **method_kwargs(method, loaded), **options), torch.no_grad():
            loaded.model(**inputs)
            out.append(set(vlprune.last_selection(loaded.model).indices[0].tolist()))
    return out


def _top(scores, k):
    return [set(torch.topk(row, k).indices.tolist()) for row in scores]


def test_signals_are_what_the_methods_select_on(measured):
    """DeSAP with task_ratio 1 (0) keeps the top-K of its task cue (of the last block's [CLS] attention);
    FastV at layer 1 keeps the top-K of layer 0's last-token attention."""
    loaded, samples, scores, target = measured
    assert target.shape == (3, 144) and target.any(1).all()
    assert _kept(loaded, samples, "desap", 16, task_ratio=1.0, merge=False) == _top(scores["desap.qq.fcma"], 16)
    assert _kept(loaded, samples, "desap", 16, task_ratio=1.0, merge=False, fcma=False, attention="kk") == _top(
        scores["desap.kk.cosine"], 16)
    assert _kept(loaded, samples, "desap", 16, task_ratio=0.0, merge=False) == _top(scores["clip.cls.b3"], 16)
    assert _kept(loaded, samples, "fastv", 16, layer=1) == _top(scores["llm.last.l0"], 16)
    assert loaded.model.config._attn_implementation != "eager"  # restored


def test_signals_cli_json(tmp_path):
    from typer.testing import CliRunner

    from vlprune.cli import app

    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["testbed", "signals", "-n", "4", "--batch-size", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    names = [r["signal"] for r in rep["rows"]]
    assert names[:4] == [f"clip.cls.b{i}" for i in range(4)] and "llm.last.l1" in names
    assert {"desap.qq.fcma", "desap.vv.cosine", "clip.patch_cosine"} <= set(names)
    assert all(0.0 <= r["auc"] <= 1.0 for r in rep["rows"])
    used = {r["signal"]: r["used_by"] for r in rep["rows"]}
    assert "VisPruner" in used["clip.cls.b2"] and "DeSAP A_s" in used["clip.cls.b3"] and "FastV" in used["llm.last.l0"]
