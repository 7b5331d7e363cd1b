"""What a user reads: methods() printed, last_selection after remove, the picture's legend, and `vlprune bench`'s
dtype choice, matmul path and efficiency anomaly."""
from __future__ import annotations

import torch
from rich.console import Console

import vlprune
from vlprune.cpu_info import matmul_path, pick_dtype
from vlprune.speed_report import check_targets, print_report


def test_methods_print_readably():
    text = repr(vlprune.methods())
    assert "function" not in text and " at 0x" not in text
    assert "desap" in text and "task_ratio=0.5" in text
    assert " at 0x" not in repr(vlprune.methods()["fastv"])
    assert all(spec.kept for spec in vlprune.methods().values())


def test_last_selection_survives_remove(tiny, pixels):
    model = tiny.model
    vlprune.remove(model)
    inputs = tiny.prompt_ids(["what is it?", "where is it?"])
    with vlprune.pruned(model, "random", 5):
        model(**inputs, pixel_values=pixels)
        inside = vlprune.last_selection(model)
    assert vlprune.last_selection(model) is inside and len(inside.indices[0]) == 5
    vlprune.apply(model, "random", 5)  # a new patch starts empty again
    assert vlprune.last_selection(model) is None
    vlprune.remove(model)


def test_last_selection_on_a_never_patched_model_says_so():
    import pytest
    from torch import nn

    with pytest.raises(ValueError, match="apply"):
        vlprune.last_selection(nn.Linear(2, 2))


def test_legend_explains_the_marks():
    from PIL import Image

    from vlprune.viz import LEGEND, with_legend

    pic = with_legend(Image.new("RGB", (384, 100), (0, 0, 0)))
    assert pic.width == 384 and pic.height > 100 + 18 * len(LEGEND)
    strip = {colour for _, colour in pic.crop((0, 100, 384, pic.height)).getcolors(1 << 16)}
    assert (230, 30, 30) in strip and (200, 200, 200) in strip  # the red box and the grey swatches
    assert "red box" in LEGEND[0][2] and "dropped" in LEGEND[1][2]


# -- bench -------------------------------------------------------------------------------------------------
AVX2 = frozenset({"avx2", "fma"})
SAPPHIRE = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def test_auto_dtype_follows_the_cpu():
    assert pick_dtype("auto", "cpu", AVX2)[0] == "fp32"  # bf16 emulated: ~5x slower there (issue 24)
    assert pick_dtype("auto", "cpu", SAPPHIRE)[0] == "bf16"
    assert pick_dtype("bf16", "cpu", AVX2) == ("bf16", "asked for")
    assert pick_dtype("auto", torch.device("cuda"), AVX2)[0] == "bf16"
    assert "emulated" in matmul_path(AVX2) and "AMX" in matmul_path(SAPPHIRE)


def _report(eff: float) -> dict:
    row = {"method": "none", "keep": 576, "prefill_ms": 100.0, "prune_ms": 0.0, "speedup": 1.0,
           "flops_bound_speedup": 1.0, "efficiency": 1.0, "ttft_ms": 1, "peak_mem_mb": 1, "kv_cache_mb": 1,
           "tflops": 1.0}
    desap = {**row, "method": "desap", "keep": 64, "prefill_ms": 100 / (3 * eff), "prune_ms": 1.0, "speedup": 3 * eff,
             "flops_bound_speedup": 3.0, "efficiency": eff}
    return {"results": [row, desap], "model": "m", "layers": 4, "vision_layers": 3, "batch": 1, "dtype": "fp32",
            "dtype_reason": "auto: this CPU has no bf16 hardware", "cpu_matmul": matmul_path(AVX2),
            "visual_tokens": 576, "text_tokens": 32, "device": "cpu"}


def test_efficiency_above_the_bound_is_an_anomaly_not_held():
    target = check_targets(_report(1.05))[0]
    assert target["held"] is None and target["anomaly"] and "anomaly" in target["detail"]
    assert check_targets(_report(0.95))[0]["held"] is True and not check_targets(_report(0.95))[0]["anomaly"]
    report = _report(1.05)
    report["targets"] = check_targets(report)
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "dtype fp32 (auto: this CPU has no bf16 hardware); CPU matmul:" in text and "emulated" in text
    assert "anomaly" in text and "held  DeSAP@64" not in text
