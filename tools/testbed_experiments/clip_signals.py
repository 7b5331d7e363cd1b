"""The CLIP rows of ``vlprune testbed signals`` for any testbed CLIP (its vision tower put into the bundled LLaVA,
DeSAP's text side from the same folder), to compare the issue-22 CLIP experiments on the same val questions. The
LLM rows are left out: that LLaVA was trained on the bundled tower's features, not on this one's.
    python tools/testbed_experiments/clip_signals.py CLIP_DIR|- [N_VAL] [OUT_JSON]    # -: the bundled CLIP"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vlprune.evaluation import load_model
from vlprune.testbed import load_split
from vlprune.testbed.signals import KS, compute_signals, signal_report


def bundled_with_clip(path: str | None):
    """The bundled testbed, its vision tower (and DeSAP's ``clip``) replaced by the CLIP at ``path`` (None: as is)."""
    from transformers import CLIPModel

    from vlprune.testbed.train import vision_weights

    loaded = load_model("testbed")
    if path:
        loaded.model.model.vision_tower.load_state_dict(vision_weights(CLIPModel.from_pretrained(path)))
        loaded.clip = str(path)
    return loaded


def clip_rows(path: str | None, n_val: int) -> dict:
    """``{"n": questions, "rows": [CLIP signal rows]}`` on the first ``n_val`` val samples."""
    loaded = bundled_with_clip(path)
    scores, target = compute_signals(loaded, load_split("val", n_val), 25)
    blocks = loaded.model.config.vision_config.num_hidden_layers
    report = signal_report(scores, target, KS, loaded.model.config.vision_feature_layer % (blocks + 1) - 1)
    return {"n": report["n"], "rows": [r for r in report["rows"] if not r["signal"].startswith("llm.")]}


def print_rows(title: str, result: dict) -> None:
    print(f"{title}: CLIP signals on {result['n']} val questions")
    for r in result["rows"]:
        print(f"{r['signal']:<20} AUC {r['auc']:.3f}  " + "  ".join(f"R@{k} {r[f'recall@{k}']:.3f}" for k in KS))


if __name__ == "__main__":
    clip_path = None if sys.argv[1] == "-" else sys.argv[1]
    torch.set_num_threads(2)
    result = clip_rows(clip_path, int(sys.argv[2]) if len(sys.argv) > 2 else 500)
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps({"clip": clip_path or "bundled", **result}, indent=2) + "\n")
    print_rows(clip_path or "bundled", result)
