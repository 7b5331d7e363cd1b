"""Pure tensor helpers shared by the selection functions and the runtime (no model knowledge)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b]]`` for a batch: x (B, N, D), index (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Every column of each row (B, N) by descending score, ties towards the lower index (a stable sort: a tiny
    decreasing ramp would change real scores). Returns (B, N)."""
    return torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices


def true_first(mask: torch.Tensor) -> torch.Tensor:
    """Column indices of each row of a bool (B, N) mask: the True ones in ascending order, then the False ones.

    The per-row positions of a mask without a boolean index (whose variable length costs a host sync)."""
    return torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices


def topk_indices(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest ``scores`` per row (B, N), optionally outside ``exclude`` (bool, B x N).

    Ties are broken towards the lower index so the result is deterministic. Returns (B, k), unsorted.
    """
    s = scores.float()
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    return descending_order(s)[:, :k]


def spatial_sort(index: torch.Tensor) -> torch.Tensor:
    """Sort kept indices so the LLM sees tokens in raster (spatial) order."""
    return torch.sort(index, dim=-1).values


def mask_from_indices(index: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean (B, N) mask with True at ``index`` (B, K)."""
    mask = torch.zeros(index.shape[0], n, dtype=torch.bool, device=index.device)
    return mask.scatter_(1, index, True)


def nearest_centre_merge(
    features: torch.Tensor, keep: torch.Tensor, metric: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-merge every dropped token into its most cosine-similar kept token (DeSAP §4.3, "Token Merging").

    features (B, N, D); keep (B, K) kept indices (the cluster centres); metric (B, N, Dm) the space in which
    similarity is measured (defaults to ``features``). Each centre becomes the mean of itself and the tokens
    assigned to it, so the token count stays K. Returns ``(merged (B, K, D), assign (B, N))`` where
    ``assign[b, i]`` is the position in ``keep[b]`` of the centre that token i ended up in.
    """
    b, n, d = features.shape
    k = keep.shape[1]
    metric = features if metric is None else metric
    unit = F.normalize(metric.float(), dim=-1)
    sim = unit @ gather_rows(unit, keep).transpose(1, 2)  # (B, N, K)
    assign = sim.argmax(dim=-1)
    # a kept token always belongs to its own cluster
    assign.scatter_(1, keep, torch.arange(k, device=keep.device).expand(b, k))
    sums = torch.zeros(b, k, d, dtype=torch.float32, device=features.device)
    sums.scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, d), features.float())
    counts = torch.zeros(b, k, dtype=torch.float32, device=features.device)
    counts.scatter_add_(1, assign, torch.ones(b, n, device=features.device))
    merged = (sums / counts.unsqueeze(-1)).to(features.dtype)
    return merged, assign


def copy_to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``. CUDA: through pinned memory, non-blocking, so the host does not wait for
    the work already queued (a plain copy from pageable memory synchronises the stream)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def repeat_per_sample(items: list, per_sample: list[int], r: int) -> list:
    """Per-image ``items`` (each sample's images in prompt order) with every sample's block repeated ``r`` times,
    as ``generate()`` repeats its input rows for ``num_beams`` / ``num_return_sequences``."""
    out, start = [], 0
    for n in per_sample:
        out.extend(items[start:start + n] * r)
        start += n
    return out


def visual_mask(input_ids: torch.Tensor, token_ids: int | tuple[int, ...] | list[int]) -> torch.Tensor:
    """(B, L) bool: ``input_ids`` equal to one of ``token_ids``."""
    if isinstance(token_ids, int):
        return input_ids == token_ids
    if len(token_ids) == 1:
        return input_ids == token_ids[0]
    return torch.isin(input_ids, torch.tensor(list(token_ids), device=input_ids.device))
