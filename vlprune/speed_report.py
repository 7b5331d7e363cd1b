"""``vlprune bench``'s report: the device line, the three targets judged on a run, and the table."""
from __future__ import annotations

import math
import os
from typing import Any

import torch


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model with its core and thread counts."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


ENCODER_METHODS = ("desap", "vispruner", "visionzip", "random")


def check_targets(report: dict) -> list[dict]:
    """The issue's three targets, evaluated on this run's numbers (None when a needed row is missing)."""
    rows = {(r["method"], r["keep"]): r for r in report["results"]}
    full = next((r for r in report["results"] if r["method"] == "none"), None)
    out = []
    d64 = rows.get(("desap", 64))
    eff = None if d64 is None else d64["efficiency"]
    out.append({
        "target": "DeSAP@64 reaches >= 90% of its FLOPs-bound prefill speedup",
        # above the bound is impossible for a sound measurement: not judged, flagged as an anomaly
        "held": None if eff is None or eff > 1.0 else eff >= 0.9,
        "anomaly": eff is not None and eff > 1.0,
        "detail": None if eff is None else
        f"speedup {d64['speedup']:.2f}x / bound {d64['flops_bound_speedup']:.2f}x = {100 * eff:.1f}%"
        + (" > 100%: a measurement anomaly, not a held target" if eff > 1.0 else ""),
    })
    desap = [r for r in report["results"] if r["method"] == "desap"]
    if full and desap:
        shares = {r["keep"]: r["prune_ms"] / full["prefill_ms"] for r in desap}
        out.append({"target": "DeSAP pruning step <= 3% of the full prefill", "held": max(shares.values()) <= 0.03,
                    "detail": ", ".join(f"keep {k}: {100 * s:.2f}%" for k, s in shares.items())})
    else:
        out.append({"target": "DeSAP pruning step <= 3% of the full prefill", "held": None, "detail": None})
    checks, details = [], []
    for (m, k), r in rows.items():
        f = rows.get(("fastv", k))
        if m in ENCODER_METHODS and f is not None:
            ok = r["prefill_ms"] <= f["prefill_ms"]
            checks.append(ok)
            if not ok:
                details.append(f"{m}@{k} {r['prefill_ms']:.0f} ms > fastv {f['prefill_ms']:.0f} ms")
    out.append({"target": "every encoder-side method at least as fast (prefill) as FastV at the same budget",
                "held": all(checks) if checks else None,
                "detail": "; ".join(details) if details else (f"{len(checks)} comparisons" if checks else None)})
    return out


def dtype_line(report: dict) -> str:
    """``dtype bf16 (auto: ...); CPU matmul: AVX512, oneDNN; bf16 on AMX`` (the matmul part on CPU runs)."""
    why = f" ({report['dtype_reason']})" if report.get("dtype_reason") else ""
    path = f"; CPU matmul: {report['cpu_matmul']}" if report.get("cpu_matmul") else ""
    return f"dtype {report['dtype']}{why}{path}"


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def print_report(report: dict, console: Any) -> None:
    from rich.table import Table

    size = report.get("image_size")
    frames = report.get("frames", 1)
    image = "" if not size else (f"{frames}-frame video of {size[0]}x{size[1]}, " if frames > 1
                                 else f"{size[0]}x{size[1]} image, ")
    newlines = f"+{report['newlines']} newlines" if report.get("newlines") else ""
    table = Table(title=(f"{report['model']}: LLM {report['layers']} layers, vision {report['vision_layers']} layers, "
                         f"batch {report['batch']}, {image}{report['visual_tokens']}{newlines}+"
                         f"{report['text_tokens']} tokens on {report['device']}\n{dtype_line(report)}"))
    cols = ("method", "keep", "prefill ms", "vision ms", "LLM ms", "prune ms", "prune %", "TTFT ms", "peak MB", "KV MB", "TFLOPs",
            "speedup", "bound", "efficiency")
    for c in cols:
        table.add_column(c, justify="right")
    full = next((r for r in report["results"] if r["method"] == "none"), None)
    for r in report["results"]:
        share = 100 * r["prune_ms"] / full["prefill_ms"] if full else None
        table.add_row(r["method"], str(r["keep"]), _fmt(r["prefill_ms"], ".0f"), _fmt(r.get("vision_ms"), ".0f"),
                      _fmt(r.get("llm_ms"), ".0f"), _fmt(r["prune_ms"], ".1f"),
                      _fmt(share, ".2f"), _fmt(r["ttft_ms"], ".0f"), _fmt(r["peak_mem_mb"], ".0f"),
                      _fmt(r["kv_cache_mb"], ".1f"), _fmt(r["tflops"], ".3f"), _fmt(r["speedup"], ".2f"),
                      _fmt(r["flops_bound_speedup"], ".2f"),
                      _fmt(r["efficiency"], ".2f") + (" !" if (r["efficiency"] or 0) > 1.0 else ""))
    console.print(table)
    above = [f"{r['method']}@{r['keep']}" for r in report["results"] if (r["efficiency"] or 0) > 1.0]
    if above:
        console.print(f"[yellow]anomaly[/yellow]  efficiency > 1 (faster than its FLOPs bound allows) for "
                      f"{', '.join(above)}: a measurement artefact (noise, load, a slow kernel path in the "
                      "unpruned run), not a speedup; rerun with more --repeats, --threads 1 --clock cpu")
    for s in report.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {s['method']} {s.get('keep', '')}: {s['reason']}")
    for t in report.get("targets", []):
        mark = {True: "[green]held[/green]", False: "[red]NOT held[/red]", None: "[dim]n/a[/dim]"}[t["held"]]
        mark = "[yellow]anomaly[/yellow]" if t.get("anomaly") else mark
        console.print(f"{mark}  {t['target']}" + (f"  ({t['detail']})" if t["detail"] else ""))
