"""``vlprune.testbed.load()``: the bundled checkpoint, its processor and samples, ready for ``vlprune.apply``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from .scenes import Sample, load_split


class Testbed(NamedTuple):
    """What :func:`load` returns (unpacks as ``model, processor, samples``)."""

    model: Any  # LlavaForConditionalGeneration, eval mode, the checkpoint's per-method defaults attached
    processor: Any  # LlavaProcessor
    samples: list[Sample]  # .image, .prompt (chat-formatted question), .question, .answer, .boxes, .family


def checkpoint_dir() -> Path:
    """Folder of the packaged testbed checkpoint (``clip/`` inside it)."""
    return Path(__file__).resolve().parent / "checkpoint"


def video_checkpoint_dir() -> Path:
    """Folder of the packaged video testbed checkpoint (a Video-LLaVA; DeSAP uses :func:`clip_dir`)."""
    return Path(__file__).resolve().parent / "checkpoint_video"


def deep_checkpoint_dir() -> Path:
    """Folder of the packaged 6-layer testbed (``--model testbed-deep``; the CLIP is :func:`clip_dir`'s)."""
    return Path(__file__).resolve().parent / "checkpoint_deep"


BUNDLED = {"testbed": checkpoint_dir, "testbed-deep": deep_checkpoint_dir, "testbed-video": video_checkpoint_dir}


def clip_dir(path: str | Path | None = None) -> Path:
    """The testbed's own CLIP (text tower + projections), DeSAP's ``clip=``."""
    return Path(path or checkpoint_dir()) / "clip"


def load(split: str = "test", n: int | None = 8, seed: int | None = None, *, path: str | Path | None = None,
         dtype: torch.dtype = torch.float32, device: str | None = None, deep: bool = False) -> Testbed:
    """Load the trained testbed (``deep``: the 6-layer ``testbed-deep``; or a rebuilt one at ``path``) and ``n``
    samples of ``split`` (None: all).

    The checkpoint's ``method_options.json`` (e.g. FastV's layer for its 2-layer LLM) is attached to the model,
    so ``vlprune.apply(model, "fastv", 16)`` uses it, as ``vlprune eval`` does; explicit options still win.
    DeSAP needs ``processor=processor, clip=vlprune.testbed.clip_dir()``.
    """
    from ..evaluation import load_model

    if split not in ("test", "val", "train"):
        raise ValueError(f"split must be test, val or train, got {split!r}")
    name = ("testbed-deep" if deep else "testbed") if path is None else str(path)
    loaded = load_model(name, None, dtype, device)
    return Testbed(loaded.model, loaded.processor, load_split(split, n, seed))


def load_video(split: str = "test", n: int | None = 8, seed: int | None = None, *, path: str | Path | None = None,
               dtype: torch.dtype = torch.float32, device: str | None = None) -> Testbed:
    """The video testbed (``VideoLlavaForConditionalGeneration`` + its processor) and ``n`` clips of ``split``.

    Samples carry ``.frames`` (4 PIL frames), ``.prompt`` (with ``<video>``), ``.question``, ``.answer``,
    ``.family`` and ``.boxes`` (per frame). ``processor(text=[s.prompt], videos=[s.frames])`` gives the model's
    inputs; DeSAP needs ``processor=processor, clip=vlprune.testbed.clip_dir()`` (the image testbed's CLIP).
    """
    from ..evaluation import load_model
    from .video_scenes import load_video_split

    if split not in ("test", "val", "train"):
        raise ValueError(f"split must be test, val or train, got {split!r}")
    loaded = load_model("testbed-video" if path is None else str(path), None, dtype, device)
    return Testbed(loaded.model, loaded.processor, load_video_split(split, n, seed))
