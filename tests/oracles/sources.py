"""Plain-tensor inputs shared by the oracle tests: tie-free draws and a SignalSource over given tensors."""
from __future__ import annotations

import math

import torch


def draw(n: int, seed: int, heads: int = 2, batch: int = 2, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, N, D) and [CLS]->patch attention (B, H, N); ties are screened by :func:`run_tie_free`."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, n, dim, generator=g)
    attn = torch.softmax(torch.randn(batch, heads, n, generator=g), dim=-1)
    return feats, attn


class TensorSource:
    """The signals an encoder-side selection reads, given as tensors (patch rows only; [CLS] apart)."""

    def __init__(self, features, cls_attention, keys=None, cls_feature=None):
        self._f, self._a, self._k, self._c = features, cls_attention, keys, cls_feature
        side = math.isqrt(features.shape[1])
        self.grid = (side, side)

    def features(self):
        return self._f

    def cls_attention(self):
        return self._a

    def last_cls_attention(self):  # one map for both (PruMerge reads the last block's)
        return self._a

    def keys(self):
        return self._k

    def cls_feature(self):
        return self._c


class TieWatch(torch.overrides.TorchFunctionMode):
    """Records whether any ``argsort``/``sort``/``topk``/``argmax``/``max`` inside the block saw tied values along
    its dimension: the official code uses non-stable orderings, so its result is only defined without ties."""

    _ORDERING = {torch.argsort, torch.Tensor.argsort, torch.topk, torch.Tensor.topk, torch.sort, torch.Tensor.sort,
                 torch.argmax, torch.Tensor.argmax, torch.max, torch.Tensor.max}

    def __init__(self) -> None:
        super().__init__()
        self.ties = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._ORDERING and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            at = 2 if func in (torch.topk, torch.Tensor.topk) else 1  # topk(k, dim), the others (dim)
            dim = kwargs.get("dim", args[at] if len(args) > at and isinstance(args[at], int) else -1)
            x = args[0].detach()
            if x.dim() > 0 and x.shape[dim] > 1:
                s = x.sort(dim=dim).values
                self.ties |= bool((s.narrow(dim, 1, s.shape[dim] - 1) == s.narrow(dim, 0, s.shape[dim] - 1)).any())
        return func(*args, **kwargs)


def run_tie_free(draw_inputs, official, tries: int = 50, watch_cls: type = TieWatch):
    """Draw inputs with seeds 0, 1, ... until ``official(*inputs)`` runs without a tie; returns (inputs, result).
    ``watch_cls``: the TieWatch (sub)class that decides which orderings count."""
    for seed in range(tries):
        inputs = draw_inputs(seed)
        with watch_cls() as watch:
            out = official(*inputs)
        if not watch.ties:
            return inputs, out
    raise AssertionError(f"no tie-free draw in {tries} seeds")


def patched_prefill_and_generate(model, method: str, keep: int, inputs: dict, pixels, steps: int = 4, **options):
    """Apply ``method`` to ``model``, run one prefill and a greedy ``generate`` of ``steps`` tokens, remove it.
    Returns (the LLM input of the prompt (B, L, D), the prefill's last-token logits, the generated ids)."""
    import vlprune

    captured = {}

    def capture(module, args, kwargs):  # the first call: the prompt, as the LLM receives it
        captured.setdefault("embeds", (args[0] if args else kwargs["hidden_states"]).clone())

    hook = model.model.language_model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    vlprune.apply(model, method, keep, **options)
    try:
        with torch.no_grad():
            got = model(**inputs, pixel_values=pixels).logits[:, -1]
            out = model.generate(**inputs, pixel_values=pixels, max_new_tokens=steps, min_new_tokens=steps,
                                 do_sample=False)
    finally:
        vlprune.remove(model)
        hook.remove()
    return captured["embeds"], got, out
