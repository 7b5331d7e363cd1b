"""Score a LLaVA-style model on testbed samples (greedy decoding, first word).

``evaluate`` is the reference scorer used by :func:`vlprune.testbed.train.build`.
``keep_random`` emulates encoder-side random pruning without the library: it
keeps ``k`` random visual tokens per image (in raster order), shrinks the
``<image>`` run in ``input_ids`` to ``k`` and feeds the kept features through
``compat.give_image_features`` -- the same splice the pruning adapters use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from .. import compat
from .answer import is_correct
from .scenes import Sample, prompt_for

__all__ = ["evaluate", "predict"]


def _shrink_image_run(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, keep: int,
                      pad_id: int):
    """Drop surplus image tokens per row, then re-left-pad to a common length."""
    rows = []
    for ids, m in zip(input_ids, attention_mask):
        ids = ids[m.bool()]
        pos = (ids == image_token_id).nonzero().flatten()
        drop = pos[keep:]
        sel = torch.ones_like(ids, dtype=torch.bool)
        sel[drop] = False
        rows.append(ids[sel])
    width = max(len(r) for r in rows)
    out_ids = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    out_mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
    for i, r in enumerate(rows):
        out_ids[i, width - len(r):] = r
        out_mask[i, width - len(r):] = 1
    return out_ids, out_mask


@torch.no_grad()
def predict(model, processor, samples: Sequence[Sample], batch_size: int = 50, keep_random: int | None = None,
            generator: torch.Generator | None = None, max_new_tokens: int = 2) -> list[str]:
    """Greedy answers (decoded text) for ``samples``.

    ``keep_random=k`` keeps ``k`` uniformly random visual tokens per image
    (``generator`` makes it reproducible).
    """
    model.eval()
    tok = processor.tokenizer
    dev = model.device
    preds: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        enc = processor(images=[s.image for s in chunk], text=[prompt_for(s.question) for s in chunk],
                        return_tensors="pt", padding=True)
        kwargs = {"input_ids": enc["input_ids"].to(dev), "attention_mask": enc["attention_mask"].to(dev)}
        if keep_random is None:
            kwargs["pixel_values"] = enc["pixel_values"].to(dev)
        else:
            feats = model.model.get_image_features(pixel_values=enc["pixel_values"].to(dev)).pooler_output
            kept = []
            for f in feats:
                idx = torch.randperm(f.shape[0], generator=generator)[:keep_random].sort().values.to(dev)
                kept.append(f[idx])
            ids, mask = _shrink_image_run(enc["input_ids"], enc["attention_mask"], model.config.image_token_id,
                                          keep_random, tok.pad_token_id)
            kwargs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev),
                      "pixel_values": enc["pixel_values"].to(dev)}
            kwargs = compat.give_image_features(model, kwargs, kept)
        with compat.image_features_override(model, kwargs) as kwargs:
            out = model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, kwargs["input_ids"].shape[1]:]
        preds.extend(tok.batch_decode(new, skip_special_tokens=True))
    return preds


def evaluate(model, processor, samples: Sequence[Sample], batch_size: int = 50, keep_random: int | None = None,
             seed: int = 0) -> dict:
    """Accuracy overall and per family: ``{"acc": .., "n": .., "per_family": {family: acc}}``."""
    gen = torch.Generator().manual_seed(seed)
    preds = predict(model, processor, samples, batch_size, keep_random, gen)
    hits: dict[str, list[bool]] = defaultdict(list)
    for s, p in zip(samples, preds):
        hits[s.family].append(is_correct(p, s.answer))
    allhits = [h for v in hits.values() for h in v]
    return {"acc": sum(allhits) / max(1, len(allhits)), "n": len(allhits),
            "per_family": {f: sum(v) / len(v) for f, v in sorted(hits.items())}}
