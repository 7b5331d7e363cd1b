"""`vlprune eval --match-flops`: in-LLM budgets chosen at the encoder-side budget's LLM FLOPs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlprune.cli import app
from vlprune.flops import method_tflops
from vlprune.flops_match import matched_keep, prunes_in_llm
from vlprune.presets import ModelShape


def shape(layers: int, tokens: int = 144, hidden: int = 128, ffn: int = 384) -> ModelShape:
    return ModelShape(name="t", hf_id="", layers=layers, hidden=hidden, ffn=ffn, heads=4, kv_heads=4,
                      visual_tokens=tokens)


def test_which_methods_prune_in_the_llm():
    assert prunes_in_llm("fastv") and prunes_in_llm("asap") and prunes_in_llm("visiondrop")
    assert not prunes_in_llm("desap") and not prunes_in_llm("random") and not prunes_in_llm("vispruner")


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(8, 40), keep=st.integers(8, 200), k_layer=st.integers(1, 4))
def test_fastv_matched_keep_is_the_largest_within_target(layers, keep, k_layer):
    sh = shape(layers, 576)
    eff, t, target = matched_keep("fastv", keep, sh, layer=k_layer)
    assert target == pytest.approx(method_tflops("random", keep, sh))
    if eff is None:  # the K unpruned layers alone cost more than the target
        assert method_tflops("fastv", 1, sh, layer=k_layer) > target
        return
    assert t <= target * (1 + 1e-9) and t == pytest.approx(method_tflops("fastv", eff, sh, layer=k_layer))
    assert eff == 576 or method_tflops("fastv", eff + 1, sh, layer=k_layer) > target


def test_known_cases():
    # LLaVA-1.5-7B shape, 576 tokens: FastV K=2 at 64-token compute keeps (64*32 - 2*576) / 30 ~ 29-30 tokens
    sh = shape(32, 576, 4096, 11008)
    eff, _, _ = matched_keep("fastv", 64, sh, layer=2)
    assert 25 <= eff <= 30
    # the testbeds: FastV / ASAP after layer 1 of 2 or 2 of 6 can never be as cheap as 16-48 tokens throughout
    for layers, layer in ((2, 1), (6, 2)):
        for keep in (16, 32, 48):
            assert matched_keep("fastv", keep, shape(layers), layer=layer)[0] is None
            assert matched_keep("asap", keep, shape(layers), layer=layer)[0] is None
    # ... but at 64 tokens on 6 layers FastV can: 2 x 144 + 4 k <= 6 x 64 -> k <= 24 (18: attention is quadratic)
    assert matched_keep("fastv", 64, shape(6), layer=2)[0] == 18
    # an encoder-side method's own FLOPs match at its own keep
    assert matched_keep("random", 16, shape(6))[0] == 16


@pytest.mark.filterwarnings("ignore:PyramidDrop")
def test_unmatched_floor_is_the_least_any_keep_costs():
    """PDrop reads an unreachable average keep (keep 1 on 6 layers) as the last stage's count, which costs more than
    a reachable average: the floor reported for an unmatched budget is the minimum over every keep, not keep 1's."""
    s = shape(6)
    costs = {k: method_tflops("pdrop", k, s, 144) for k in range(1, 145)}
    keep, tflops, target = matched_keep("pdrop", 16, s)
    assert keep is None and tflops > target
    assert tflops == pytest.approx(min(costs.values())) and tflops < costs[1]


def test_eval_match_flops_rows(tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", "--limit", "4", "--batch-size", "4", "--json", str(out), "--methods",
                                   "random,visiondrop,fastv", "--keep", "16", "--match-flops"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    rows = {r["method"]: r for r in rep["results"]}
    assert "effective_keep" not in rows["random"]
    vd = rows["visiondrop"]
    assert vd["keep"] == 16 and vd["effective_keep"] == 15 and vd["tflops"] <= vd["target_tflops"]
    assert vd["target_tflops"] == pytest.approx(rows["random"]["tflops"])
    assert rep["unmatched"][0]["method"] == "fastv" and rep["unmatched"][0]["min_tflops"] > vd["target_tflops"]
    assert "16->15" in res.output and "fastv@16: not run" in res.output
    assert rep["config"]["match_flops"] is True
    # a plain run is another configuration: it refuses the file instead of mixing rows
    res = CliRunner().invoke(app, ["eval", "--limit", "4", "--json", str(out), "--methods", "random", "--keep", "16"])
    assert res.exit_code != 0
