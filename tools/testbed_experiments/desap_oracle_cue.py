"""Issue 22: does DeSAP lose on the testbed because of itself or because of the instrument? Its task cue (decoupled
q-q + FCMA) is near chance on the testbed CLIP (AUC 0.55, docs/testbed.md). This runs DeSAP unchanged except that
its task cue A_t is replaced by the asked-about object's patches (1 on the object, DeSAP's own A_t / 10 as the
tie-break; a question about no object keeps DeSAP's own cue): the accuracy DeSAP's rank-prune-merge reaches when
its task half gets the cue the papers describe for real CLIP. Same test questions, budgets and options as
README's table; DeSAP unmodified is rerun through the same path as a check against that table, and the oracle
once more without DeSAP's merge (``merge=False``).
    python tools/testbed_experiments/desap_oracle_cue.py [KEEPS] [N] [OUT_JSON|-] [MODEL]  # 16,32,48 1000 - testbed"""
import json
import sys
from pathlib import Path

import torch

from importlib import import_module
from vlprune import api
from vlprune.evaluation import answer, effective_options, load_model, method_kwargs, object_recall
from vlprune.testbed import boxes_to_patch_mask, is_correct, load_split

desap = import_module("vlprune.methods.desap")  # (vlprune.methods is also a function name in vlprune)

keeps = [int(k) for k in (sys.argv[1] if len(sys.argv) > 1 else "16,32,48").split(",")]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
out_path = Path(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
model_name = sys.argv[4] if len(sys.argv) > 4 else "testbed"
torch.set_num_threads(2)
loaded = load_model(model_name)
samples = load_split("test", n)
vc = loaded.model.config.vision_config
grid = vc.image_size // vc.patch_size
options = effective_options(loaded, {}).get("desap", {})
own_alignment = desap.fine_grained_alignment
current: dict[str, torch.Tensor] = {}


def oracle_alignment(patches, v_s, text, q_t, text_mask, lam=0.1):
    """DeSAP's A_t with the current batch's object patches put first (their own order kept among them)."""
    own = own_alignment(patches, v_s, text, q_t, text_mask, lam)
    return current["target"].to(own) + own / 10


def run(oracle: bool, keep: int, **extra) -> dict:
    desap.fine_grained_alignment = oracle_alignment if oracle else own_alignment
    correct, strict = [], []
    api.apply(loaded.model, "desap", keep, **method_kwargs("desap", loaded), **{**options, **extra})
    try:
        for start in range(0, len(samples), 32):
            chunk = samples[start:start + 32]
            current["target"] = torch.stack([boxes_to_patch_mask(s.boxes, vc.image_size, grid) for s in chunk])
            preds = answer(loaded, chunk, batch_size=len(chunk))
            correct += [is_correct(p, s.answer) for p, s in zip(preds, chunk)]
            strict += object_recall(chunk, api.last_selection(loaded.model), grid, vc.image_size)[0]
    finally:
        api.remove(loaded.model)
        desap.fine_grained_alignment = own_alignment
    families = sorted({s.family for s in samples})
    per_family = {f: sum(c for c, s in zip(correct, samples) if s.family == f) / sum(s.family == f for s in samples)
                  for f in families}
    return {"task_cue": ("object patches (oracle)" if oracle else "DeSAP's own (decoupled q-q + FCMA)")
            + ("".join(f", {k}={v}" for k, v in extra.items())), "keep": keep, "options": extra,
            "accuracy": sum(correct) / len(correct), "object_recall": sum(strict) / len(strict),
            "per_family": per_family}


rows = [run(oracle, k) for oracle in (False, True) for k in keeps] + [run(True, k, merge=False) for k in keeps]
report = {"model": model_name, "split": "test", "n": len(samples), "options": options, "rows": rows}
if out_path:
    out_path.write_text(json.dumps(report, indent=2) + "\n")
for r in rows:
    print(f"{r['task_cue']:<50} keep {r['keep']:>3}  accuracy {100 * r['accuracy']:.1f}  "
          f"object recall {r['object_recall']:.2f}  " + " ".join(f"{f} {100 * a:.0f}" for f, a in r["per_family"].items()))
