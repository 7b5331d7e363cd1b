"""`vlprune bench` on the tiny models (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL): runs, writes valid JSON with every key;
the whole-prefill FLOPs of every family. No timing assertions."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from vlprune.cli import app
from vlprune.flops import layer_flops, method_tflops, visual_flops
from vlprune.presets import get_preset
from vlprune.speed import (build, clip_tower_flops, kv_cache_mb, llm_layer_flops, make_inputs, next_layout,
                           prefill_flops, qwen_layout, qwen_vit_flops, vision_layers_for)

ROW_KEYS = {"method", "keep", "prefill_ms", "prune_ms", "ttft_ms", "peak_mem_mb", "kv_cache_mb", "tflops", "speedup",
            "flops_bound_speedup", "efficiency", "vision_ms", "llm_ms"}


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
        # the parts are parts of the same passes: tower and LLM both ran and neither exceeds the slowest pass
        assert 0 < r["vision_ms"] and 0 < r["llm_ms"] and r["vision_ms"] + r["llm_ms"] <= r["prefill_ms"] * 1.5
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


# -- LLaVA-NeXT and Qwen2.5-VL -----------------------------------------------------------------------------
@pytest.mark.parametrize("model,family,image_tokens",
                         [("tiny-next", "llava_next", 80 + 8), ("tiny-qwen", "qwen2_5_vl", 35)])
def test_bench_families_write_json(tmp_path, model, family, image_tokens):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [
        "bench", "--model", model, "--dtype", "fp32", "--device", "cpu", "--methods", "none,desap,random,fastv",
        "--keep", "8", "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(out),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert {"device", "model", "family", "layers", "batch", "dtype", "image_size", "results"} <= set(report)
    assert report["model"] == model and report["family"] == family and not report["skipped"]
    assert report["visual_tokens"] + report["newlines"] == image_tokens
    rows = report["results"]
    assert [r["method"] for r in rows] == ["none", "desap", "random", "fastv"]
    full = rows[0]
    assert full["keep"] == report["visual_tokens"] and full["speedup"] == 1.0 and full["flops_bound_speedup"] == 1.0
    text = report["text_tokens"]
    assert full["llm_tokens"] == [image_tokens + text] * 2  # the whole prompt reaches every layer
    for r in rows:
        assert ROW_KEYS <= set(r), set(r) ^ ROW_KEYS
        assert r["prefill_ms"] > 0 and r["ttft_ms"] > 0 and r["kv_cache_mb"] > 0 and r["efficiency"] > 0
    for r in rows[1:]:
        assert r["keep"] == 8
        assert r["flops_bound_speedup"] > 1.0 and r["tflops"] < full["tflops"]
        assert r["kv_cache_mb"] < full["kv_cache_mb"]
        assert r["prefill_tflops"] < full["prefill_tflops"]
        first, last = r["llm_tokens"]
        if r["method"] == "fastv":  # prunes inside the LLM: every placeholder (NeXT: newlines too) in, 8 out
            assert first == image_tokens + text and last == 8 + text
        else:  # encoder side: 8 tokens (+ NeXT: at most one newline per grid row) enter the LLM
            assert 8 + text <= first == last <= 8 + report["newlines"] + text
    desap, rand = rows[1], rows[2]
    if family == "qwen2_5_vl":  # the same work everywhere but in the selection: the same bound
        assert desap["flops_bound_speedup"] == rand["flops_bound_speedup"]
    assert rows[3]["flops_bound_speedup"] < rand["flops_bound_speedup"]  # FastV's first K layers see every token


def test_family_inputs_match_the_models():
    """make_inputs' placeholders are what the real transformers model produces for the image (NeXT: patches +
    newlines from its own packing), and the FLOPs layouts agree with the models' own tiling / windows."""
    from transformers.vision_utils import get_vision_window_index

    cpu = torch.device("cpu")
    nxt = build("tiny-next", None, None, torch.float32, cpu)
    inputs = make_inputs(nxt, 2, 16, cpu, torch.float32)
    assert inputs["pixel_values"].shape == (2, 5, 3, 16, 16) and inputs["image_sizes"].tolist() == [[32, 32]] * 2
    with torch.no_grad():
        feats = nxt.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    assert [f.shape[0] for f in feats] == [nxt.image_tokens] * 2 == [88] * 2
    assert int((inputs["input_ids"][0] == 4).sum()) == 88 and inputs["input_ids"].shape[1] == 88 + 16
    pinpoints = [list(p) for p in nxt.model.config.image_grid_pinpoints]
    for size in [(20, 36), (40, 16), (33, 17), (16, 16)]:
        lay = next_layout(nxt.shape, size, pinpoints)
        pv = torch.randn(1, lay.tiles, 3, 16, 16)
        with torch.no_grad():
            n = nxt.model.model.get_image_features(pv, torch.tensor([size])).pooler_output[0].shape[0]
        assert n == lay.image_tokens, size

    qwen = build("tiny-qwen", None, None, torch.float32, cpu)
    inputs = make_inputs(qwen, 2, 16, cpu, torch.float32)
    thw = inputs["image_grid_thw"]
    assert thw.tolist() == [[1, 10, 14]] * 2 and inputs["pixel_values"].shape == (2 * 140, 3 * 2 * 4 * 4)
    with torch.no_grad():
        merged = qwen.model.model.visual(inputs["pixel_values"], grid_thw=thw).pooler_output
    assert merged.shape[0] == 2 * qwen.patches == 2 * 35
    assert int((inputs["input_ids"][0] == qwen.image_token_id).sum()) == 35
    assert inputs["mm_token_type_ids"].sum() == 2 * 35 and inputs["input_ids"].shape[1] == 35 + 16
    vc = qwen.model.config.vision_config
    for size in [(40, 56), (32, 32), (16, 24), (8, 72)]:
        lay = qwen_layout(qwen.shape, size, vc.window_size, vc.spatial_merge_size, tuple(vc.fullatt_block_indexes))
        _, cu = get_vision_window_index(torch.tensor([[1, size[0] // 4, size[1] // 4]]), vc.spatial_merge_size,
                                        vc.window_size, vc.patch_size)
        assert sorted(lay.windows) == sorted(cu.diff().tolist()), size
    seven_b = qwen_layout(get_preset("qwen2.5-vl-7b"), (896, 896))
    _, cu = get_vision_window_index(torch.tensor([[1, 64, 64]]), 2, 112, 14)
    assert seven_b.patches == 1024 and sorted(seven_b.windows) == sorted(cu.diff().tolist()) == [64] * 64
    assert seven_b.full_blocks == (7, 15, 23, 31)


def _linear_macs(module: nn.Module) -> int:
    """Weights of every Linear / Conv in ``module``: one multiply-add per weight and token."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)))


def test_vision_flops_match_the_built_towers():
    """The vision formulas' matrix terms equal the weights the real towers multiply every token with (CLIP:
    2-matrix MLP; Qwen: SwiGLU, patch embedding over 2 frames, merger on 2x2 groups); attention as documented."""
    cpu = torch.device("cpu")
    nxt = build("tiny-next", None, None, torch.float32, cpu)
    tower = nxt.model.model.vision_tower
    n, dv = 17, nxt.shape.vision_hidden  # 4x4 patches + [CLS] per tile
    attn = 2 * n * n * dv * nxt.shape.vision_layers
    assert clip_tower_flops(nxt.shape, nxt.shape.vision_layers) == n * _linear_macs(tower) + attn

    qwen = build("tiny-qwen", None, None, torch.float32, cpu)
    visual, lay, dv = qwen.model.model.visual, qwen.layout, qwen.shape.vision_hidden
    n = lay.patches * 4
    assert lay.full_blocks == (1,) and sorted(lay.windows) == [4, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16]
    attn = 2 * dv * (n * n + sum(w * w for w in lay.windows))  # block 0 windowed, block 1 full
    linear = (n * (_linear_macs(visual.patch_embed) + _linear_macs(visual.blocks))
              + lay.patches * _linear_macs(visual.merger))
    assert qwen_vit_flops(qwen.shape, lay) == linear + attn


def test_prefill_flops_llava_next_and_qwen_presets():
    # LLaVA-NeXT-7B at 672x672: base + 2x2 tiles, 2880 patches + 48 newlines; the LLM part is eq. 6-7 of
    # vlprune.flops (20.825 T unpruned, 4.252 T at 640 tokens without newlines and text)
    nxt = get_preset("llava-next-7b")
    lay = next_layout(nxt, (672, 672))
    assert (lay.tiles, lay.patches, lay.newlines) == (5, 2880, 48)
    assert abs(method_tflops(None, None, nxt, lay.patches) - 20.825) < 1e-3
    assert abs(method_tflops("desap", 640, nxt, lay.patches) - 4.252) < 1e-3
    assert llm_layer_flops(1000, nxt) == layer_flops(1000, nxt.hidden, nxt.ffn)  # no GQA: eq. 6 exactly
    no_newlines = dataclasses.replace(lay, newlines=0)
    proj = nxt.vision_hidden * nxt.hidden + nxt.hidden**2
    full_vision = 5 * clip_tower_flops(nxt, 24)
    full = prefill_flops(nxt, None, None, 0, image=no_newlines)
    assert abs(full - full_vision - 5 * 576 * proj - 20.825e12) < 1e9
    pruned = prefill_flops(nxt, "desap", 640, 0, image=no_newlines)
    assert abs(pruned - 5 * clip_tower_flops(nxt, 23) - 640 * proj - 4.252e12) < 1e9
    # with newlines and text: every layer sees them; a measured count of kept newlines replaces the per-row bound
    t = 40
    full = prefill_flops(nxt, None, None, t, image=lay)
    assert full == full_vision + 5 * 576 * proj + visual_flops([2880 + 48 + t] * 32, nxt.hidden, nxt.ffn)
    desap = prefill_flops(nxt, "desap", 640, t, image=lay)
    assert desap == prefill_flops(nxt, "desap", 640, t, image=lay, newlines=48)
    assert desap > prefill_flops(nxt, "desap", 640, t, image=lay, newlines=30)
    fastv = prefill_flops(nxt, "fastv", 640, t, image=lay)  # K = 2 layers see all 2928 placeholders
    assert fastv == (full_vision + 5 * 576 * proj + visual_flops([2928 + t] * 2 + [640 + t] * 30, nxt.hidden, nxt.ffn))
    assert full > fastv > desap and full / desap > 3.5

    # Qwen2.5-VL-7B at 896x896: 4096 patches, 1024 merged tokens; the ViT and merger run for every method
    qwen = get_preset("qwen2.5-vl-7b")
    lay = qwen_layout(qwen, (896, 896))
    d, n = qwen.hidden, 4096
    assert llm_layer_flops(100, qwen) == layer_flops(100, d, qwen.ffn) - 2 * 100 * d * (d - 512)  # 4 of 28 KV heads
    vit = (n * 6 * 14**2 * 1280 + 32 * (4 * n * 1280**2 + 3 * n * 1280 * 3420)
           + 2 * 1280 * (4 * n * n + 28 * 64 * 64**2) + 1024 * (5120**2 + 5120 * d))
    assert qwen_vit_flops(qwen, lay) == vit
    full = prefill_flops(qwen, None, None, t, image=lay)
    assert full == vit + sum(llm_layer_flops(1024 + t, qwen) for _ in range(28))
    desap, rand = (prefill_flops(qwen, m, 224, t, image=lay) for m in ("desap", "random"))
    assert desap == rand == vit + 28 * llm_layer_flops(224 + t, qwen)
    fastv = prefill_flops(qwen, "fastv", 224, t, image=lay)
    assert fastv == vit + 2 * llm_layer_flops(1024 + t, qwen) + 26 * llm_layer_flops(224 + t, qwen)
    assert full > fastv > desap
    # trimmed as the bench builds it (2 LLM layers, 2 ViT blocks: a window block, then a full one)
    small = dataclasses.replace(qwen, layers=2, vision_layers=2)
    small_lay = qwen_layout(small, (896, 896))
    assert small_lay.full_blocks == (1,)
    assert prefill_flops(small, None, None, t, image=small_lay) > prefill_flops(small, "desap", 224, t, image=small_lay)


def test_image_size_checks():
    with pytest.raises(Exception, match="multiples of 28"):
        qwen_layout(get_preset("qwen2.5-vl-7b"), (900, 896))
    res = CliRunner().invoke(app, ["bench", "--model", "tiny", "--image-size", "32x32", "--methods", "none"])
    assert res.exit_code != 0
