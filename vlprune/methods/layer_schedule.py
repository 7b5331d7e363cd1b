"""Layer-averaged budgets of progressive in-LLM methods (PyramidDrop, V2Drop): where the stages sit on an LLM of
any depth, and integer per-stage counts whose average over the LLM's layers is the budget.

A schedule is ``layers`` (visual tokens are dropped right before each of these decoder layers) and ``counts``
(visual tokens per image from that layer on); the layers before ``layers[0]`` see all ``n`` tokens. Its average
is ``(layers[0] * n + sum(segment_i * counts_i)) / num_layers`` with ``segment_i`` the layers from stage i to
the next stage (or the end): the "average number of visual tokens" the papers report (PyramidDrop issue #22,
``sum(token_i) / layer_num``).
"""
from __future__ import annotations

import warnings
from itertools import product
from typing import Callable


def scaled_layers(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """Stage layers for an LLM of ``num_layers``: ``round(f * num_layers)`` clamped to [1, num_layers - 1]
    (8/16/24 of 32 from 0.25/0.5/0.75). Stages that land on the same layer are merged by the caller (a 2-layer
    LLM has one possible stage, before layer 1)."""
    if num_layers < 2:
        raise ValueError(f"in-LLM pruning needs an LLM of at least 2 layers, got {num_layers}")
    return [min(max(int(f * num_layers + 0.5), 1), num_layers - 1) for f in fractions]


def distinct(layers: list[int]) -> list[int]:
    """The stage layers without repeats, in order (stages on one layer drop together)."""
    return sorted(set(layers))


def segments(layers: list[int], num_layers: int) -> list[int]:
    """Layers each stage's count holds for: ``[layers[1] - layers[0], ..., num_layers - layers[-1]]``."""
    return [b - a for a, b in zip(layers, layers[1:] + [num_layers])]


def layer_average(layers: list[int], counts: list[int], n: int, num_layers: int) -> float:
    """Visual tokens per image averaged over the LLM's layers (the first ``layers[0]`` layers see ``n``)."""
    return (layers[0] * n + sum(s * c for s, c in zip(segments(layers, num_layers), counts))) / num_layers


def solve(average: Callable[[float], float], target: float, iterations: int = 80) -> float:
    """The ``x`` in [0, 1] with ``average(x) == target`` for a non-decreasing ``average`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if average(mid) < target else (lo, mid)
    return (lo + hi) / 2


def fit_counts(exact: list[float], lengths: list[int], total: int, ceiling: int, spread: int | None = None) -> list[int]:
    """Integer counts near ``exact`` whose token-layers ``sum(lengths_i * counts_i)`` reach ``total``.

    Among the non-increasing counts in [1, ceiling] within ``spread`` of ``floor(exact_i)``, the one whose
    token-layers are closest to ``total`` (exact when some combination hits it; otherwise the nearest, below
    before above), then nearest to ``exact``. With 8-layer segments (8/16/24 of 32) and no count at the floor
    of 1, ``total`` is always hit; the search is (2 * spread + 1) ** stages small products (spread: 6 for up to
    three counts, else 2).
    """
    spread = spread if spread is not None else (6 if len(exact) <= 3 else 2)
    options = [range(max(1, int(x) - spread), min(ceiling, int(x) + spread) + 1) for x in exact]
    best, best_key = None, None
    for counts in product(*options):
        if any(b > a for a, b in zip(counts, counts[1:])):
            continue
        gap = total - sum(s * c for s, c in zip(lengths, counts))
        key = (abs(gap), gap < 0, sum(abs(c - x) for c, x in zip(counts, exact)))
        if best_key is None or key < best_key:
            best, best_key = list(counts), key
    if best is None:  # no non-increasing combination near the targets (cannot happen for decreasing ``exact``)
        best = [max(1, min(ceiling, int(x))) for x in exact]
    return best


def check_reachable(name: str, keep: int, least: float, n: int, num_layers: int) -> None:
    """Raise a clear error for a layer-averaged budget below what any schedule of the method reaches."""
    if keep < least:
        raise ValueError(
            f"{name}: keep={keep} is below the least layer-averaged count its stages reach on this LLM "
            f"({least:.1f} with {n} visual tokens per image and {num_layers} layers: the layers before the first stage "
            f"see every token); choose keep >= {int(least) + 1}, earlier stages (layer_fractions), or "
            "keep_means='last' (keep = the tokens left after the last stage)"
        )


def warn_counts_after_last(name: str, keep: int, n: int, num_layers: int) -> None:
    """``keep_means="auto"`` fell back to "last": say so once, since ``keep`` then is not a layer average."""
    warnings.warn(
        f"{name}: keep={keep} is not a reachable average over {num_layers} LLM layers with {n} visual tokens; "
        f"keep_means='auto' counts it after the last stage instead (set keep_means='last' to silence this, or "
        f"'average' to get an error)",
        UserWarning,
        stacklevel=3,
    )
