"""Shared by the device scripts (sync_sites.py, profile_prefill.py): a bench model of a preset with its inputs,
and its prefill patched for one method (the patch removed afterwards)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from vlprune import api
from vlprune.speed import BenchModel, build, make_inputs, method_kwargs


def bench_model(model: str, layers: int, batch: int) -> tuple[BenchModel, dict[str, torch.Tensor]]:
    """The preset built in bf16 on the GPU (on a CPU without one: a smoke run) and one batch of its inputs."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bm = build(model, layers, None, torch.bfloat16, dev)
    return bm, make_inputs(bm, batch, 32, dev, torch.bfloat16)


@contextlib.contextmanager
def patched_prefill(bm: BenchModel, inputs: dict, method: str, keep: int) -> Iterator[Callable[[], Any]]:
    """``prefill()`` of the model pruned by ``method`` to ``keep`` tokens (``none``: unpatched), as the bench runs it."""
    if method != "none":
        api.apply(bm.model, method, keep, **method_kwargs(method, bm))

    def prefill() -> Any:
        with torch.inference_mode():
            return bm.model(**inputs, use_cache=True, logits_to_keep=1)

    try:
        yield prefill
    finally:
        api.remove(bm.model)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
