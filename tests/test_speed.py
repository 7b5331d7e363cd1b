"""`vlprune bench` on the tiny model: runs, writes valid JSON with every key. No timing assertions."""
from __future__ import annotations

import dataclasses
import json

import torch
from typer.testing import CliRunner

from vlprune.cli import app
from vlprune.flops import method_tflops
from vlprune.presets import get_preset
from vlprune.speed import kv_cache_mb, prefill_flops, vision_layers_for

ROW_KEYS = {"method", "keep", "prefill_ms", "prune_ms", "ttft_ms", "peak_mem_mb", "kv_cache_mb", "tflops", "speedup",
            "flops_bound_speedup", "efficiency"}


def test_bench_tiny_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [
        "bench", "--model", "tiny", "--dtype", "fp32", "--device", "cpu", "--methods",
        "none,desap,vispruner,visionzip,fastv,random", "--keep", "8", "--repeats", "1", "--warmup", "1",
        "--threads", "1", "--json", str(out),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert {"device", "model", "layers", "batch", "dtype", "results"} <= set(report)
    assert report["model"] == "tiny" and report["batch"] == 1 and report["dtype"] == "fp32"
    rows = report["results"]
    assert rows[0]["method"] == "none" and rows[0]["speedup"] == 1.0 and rows[0]["flops_bound_speedup"] == 1.0
    assert len(rows) == 1 + 5
    for r in rows:
        assert ROW_KEYS <= set(r), set(r) ^ ROW_KEYS
        assert r["prefill_ms"] > 0 and r["ttft_ms"] > 0 and r["kv_cache_mb"] > 0
    full = rows[0]
    for r in rows[1:]:
        assert r["flops_bound_speedup"] > 1.0
        assert r["kv_cache_mb"] < full["kv_cache_mb"]  # fewer cached tokens (FastV: in its later layers)
        assert r["tflops"] < full["tflops"]
    assert len(report["targets"]) == 3


def test_bench_skips_missing_family(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--model", "no-such-model", "--methods", "none"])
    assert res.exit_code != 0


def test_prefill_flops_counts_vision_llm_and_depth():
    shape = dataclasses.replace(get_preset("llava-1.5-7b"), layers=4, vision_layers=3)
    full = prefill_flops(shape, None, None, text_tokens=0)
    pruned = prefill_flops(shape, "desap", 64, text_tokens=0)
    # the LLM part is eq. 6-7 (vlprune.flops) at the built depth; the rest (vision + projector) is what stays
    llm_full, llm_64 = method_tflops(None, None, shape) * 1e12, method_tflops("desap", 64, shape) * 1e12
    # encoder-side methods stop at the feature layer: one CLIP block (n = 577, D_v = 1024, M_v = 4096) less
    block = 4 * 577 * 1024**2 + 2 * 577**2 * 1024 + 2 * 577 * 1024 * 4096
    assert abs((full - pruned) - (llm_full - llm_64) - 512 * (1024 * 4096 + 4096 * 4096) - block) < 1e3
    deeper_vision = dataclasses.replace(shape, vision_layers=24)
    assert full / pruned > prefill_flops(deeper_vision, None, None, 0) / prefill_flops(deeper_vision, "desap", 64, 0)
    # FastV: the first K layers see every token, so its bound is below an encoder method's at the same budget
    assert prefill_flops(shape, "fastv", 64, 0) > pruned
    assert vision_layers_for(get_preset("llava-1.5-7b"), 4, None) == 3


def test_kv_cache_mb_counts_keys_and_values():
    from transformers import DynamicCache

    cache = DynamicCache()
    k = torch.zeros(1, 2, 10, 8)
    cache.update(k, k.clone(), 0)
    assert kv_cache_mb(cache) == 2 * k.numel() * 4 / 2**20
