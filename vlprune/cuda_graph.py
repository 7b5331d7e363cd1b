"""CUDA-graph replay for launch-bound selection steps with fixed shapes.

A loop of small kernels (VisPruner's duplicate removal: ~10 kernels per round, hundreds of rounds) costs a
GPU far more host time to launch than device time to run. ``GraphedCall`` captures such a pure tensor function
once per input signature and replays it: one launch instead of thousands. Off the GPU, while another capture is
under way, or with ``VLPRUNE_CUDA_GRAPHS=0`` it simply calls the function.

Costs: the first call per signature synchronises the device to capture; each kept graph holds its input buffers
and its private memory pool on the GPU (VisPruner at LLaVA-NeXT's size: tens of MB), up to ``max_graphs`` of them.
"""
from __future__ import annotations

import os
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn


_EAGER = object()  # cache entry of a signature whose capture failed


_ALL: "weakref.WeakSet[GraphedCall]" = weakref.WeakSet()


def graphs_enabled() -> bool:
    return os.environ.get("VLPRUNE_CUDA_GRAPHS", "1") != "0"


def release_graphs() -> None:
    """Drop every kept graph (and the GPU memory of its buffers and pool); the next call captures again."""
    for call in list(_ALL):
        call.clear()


def _static_key(value: Any) -> Any:
    """A module argument is keyed by identity and by where its weights live (what a replay reads), without
    holding the module: the cache must not keep a deleted model's layers alive."""
    if isinstance(value, nn.Module):
        return ("module", id(value), tuple(p.data_ptr() for p in value.parameters()))
    return value


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_clone(x) for x in out)


class GraphedCall:
    """``fn(*tensors, **static)``: replayed from a CUDA graph captured per (shapes, dtypes, device, static args, key).

    ``fn`` must be a pure function of its tensor arguments with no host synchronisation (shapes, and so every
    loop bound, are fixed by the signature). Outputs are cloned out of the graph's buffers. At most
    ``max_graphs`` signatures are kept (least recently used dropped). Static ``nn.Module`` arguments are keyed by
    identity and weight addresses (see ``_static_key``).
    """

    def __init__(self, fn: Callable[..., Any], max_graphs: int = 8) -> None:
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: OrderedDict = OrderedDict()
        _ALL.add(self)

    def clear(self) -> None:
        self._graphs.clear()

    def __call__(self, *tensors: torch.Tensor, key: tuple = (), **static: Any) -> Any:
        """``key``: more cache-key material that is not passed to ``fn`` (e.g. the addresses of weights it reads)."""
        if not (
            graphs_enabled()
            and tensors
            and all(t.is_cuda for t in tensors)
            and not torch.cuda.is_current_stream_capturing()
        ):
            return self.fn(*tensors, **static)
        key = (tuple((tuple(t.shape), t.dtype, t.device) for t in tensors),
               tuple((name, _static_key(v)) for name, v in sorted(static.items())), key)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(tensors, static)
            except RuntimeError as e:  # not capturable here: run eagerly for this signature from now on
                warnings.warn(f"vlprune: CUDA graph capture of {getattr(self.fn, '__name__', self.fn)} failed "
                              f"({e}); running it eagerly", RuntimeWarning, stacklevel=2)
                entry = _EAGER
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        if entry is _EAGER:
            return self.fn(*tensors, **static)
        inputs, graph, out = entry
        for buf, t in zip(inputs, tensors):
            buf.copy_(t)
        graph.replay()
        return _clone(out)

    def _capture(self, tensors: tuple[torch.Tensor, ...], static: dict) -> tuple[list, Any, Any]:
        with torch.inference_mode(False), torch.no_grad():
            inputs = [t.detach().clone() for t in tensors]  # the graph's own input buffers
            side = torch.cuda.Stream(tensors[0].device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (library handles, workspaces)
                self.fn(*inputs, **static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn(*inputs, **static)
        return inputs, graph, out
