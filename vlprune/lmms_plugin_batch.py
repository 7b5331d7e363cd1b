"""Request bookkeeping for the lmms-eval plugin that needs no lmms-eval: batching order, stop strings, kept counts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def batches(keys: Sequence[tuple[str, int]], size: int) -> Iterator[list[int]]:
    """Indices into ``keys`` in batches of at most ``size``; one batch never mixes two groups (the ``str`` of each
    key: the request's generation settings); longest first inside a group (the ``int``), ties in request order."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0], -keys[i][1], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == size or keys[batch[0]][0] != keys[i][0]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def group_key(gen_kwargs: dict[str, Any]) -> str:
    """Requests with equal generation settings may share a batch."""
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def stop_strings(until: Any) -> list[str]:
    """lmms-eval's ``until`` (None, a string or a list of strings) as a list."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
        return list(until)
    raise ValueError(f"generation_kwargs 'until' must be a string or a list of strings, got {until!r}")


def kept_per_request(kept: Any, images_per_request: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Split a ``vlprune.KeptTokens`` (one entry per image or video, prompt order) into (kept, of) pairs per
    request."""
    pairs = [(len(ix), int(h) * int(w)) for ix, (h, w) in zip(kept.indices, kept.grids)]
    if len(pairs) != sum(images_per_request):
        raise RuntimeError(f"vlprune recorded {len(pairs)} images for a batch of {sum(images_per_request)}")
    out, start = [], 0
    for n in images_per_request:
        out.append(pairs[start : start + n])
        start += n
    return out


def visuals_of(doc_to_visual: Callable[[Any], Any] | None, doc: Any, num_frames: int = 8) -> list[Any]:
    """The images and videos of one document: lmms-eval's ``doc_to_visual`` may return None, one item or a list;
    PIL images become RGB, a video file's path (lmms-eval's video tasks) its ``num_frames`` frames sampled as
    Video-LLaVA does (``(T, H, W, 3)`` uint8 array, :func:`vlprune.bench.video_frames.read_frames`)."""
    if doc_to_visual is None:
        return []
    found = doc_to_visual(doc)
    if found is None:
        return []
    if not isinstance(found, (list, tuple)):
        found = [found]
    visuals = []
    for v in found:
        if v is None:
            continue
        if isinstance(v, (str, Path)) and Path(v).suffix.lower() in VIDEO_SUFFIXES:
            from .bench.video_frames import read_frames

            visuals.append(read_frames(v, num_frames))
            continue
        if not hasattr(v, "convert"):
            raise TypeError(f"the vlprune plugin takes PIL images and video file paths from doc_to_visual, got "
                            f"{type(v).__name__} {str(v)[:80]!r} (audio tasks are not supported)")
        visuals.append(v.convert("RGB"))
    return visuals


def is_video(visual: Any) -> bool:
    """Whether an entry of :func:`visuals_of` is a video (an array of frames) rather than a PIL image."""
    return getattr(visual, "ndim", 0) == 4
