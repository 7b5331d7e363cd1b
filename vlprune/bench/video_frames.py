"""Video decoding and frame sampling as Video-LLaVA's evaluation does it, with PyAV (``pip install 'vlprune[video]'``).

Video-LLaVA's video processor (``videollava/model/multimodal_encoder/languagebind/video/processing_video.py``,
``load_and_transform_video``, default backend ``decord``, ``num_frames=8``) samples

    frame_id_list = np.linspace(0, duration - 1, num_frames, dtype=int)

over ``duration = len(decord.VideoReader(path))``, the number of video packets decord indexes.  Here the frames are
counted the same way (the container's video packets, demuxed without decoding), then decoded in order and the
sampled ones kept as RGB ``uint8`` arrays.  Video-LLaVA's transform then also flips the clip horizontally with
probability 0.5 (``RandomHorizontalFlipVideo(p=0.5)``, even at evaluation); vlprune does not (answers must not
depend on a coin), and leaves resizing and normalising to the model's own processor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NUM_FRAMES", "VideoDecodeError", "VideoRef", "count_frames", "read_frames", "sample_indices"]

NUM_FRAMES = 8  # Video-LLaVA's vision_config.num_frames for its video tower


class VideoDecodeError(RuntimeError):
    """A video file that cannot be decoded; the message names the file and what to do."""


def _av() -> Any:
    try:
        import av
    except ImportError:  # pragma: no cover - the test environment has it (requirements/lock.txt)
        raise ImportError("decoding videos needs PyAV: pip install 'vlprune[video]' (or pip install av)") from None
    return av


def sample_indices(total: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """Video-LLaVA's frame indices: ``np.linspace(0, total - 1, num_frames, dtype=int)`` (uniform, first and last
    frame included; a clip shorter than ``num_frames`` repeats frames)."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return [int(i) for i in np.linspace(0, total - 1, num_frames, dtype=int)]


def _open(path: Path) -> Any:
    av = _av()
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path} (see docs/benchmarks.md for the layout)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open video {path} ({exc}); is it a complete video file? "
                               "re-download it, or remove its question") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path} has no video stream; re-download it, or remove its question")
    return container


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream as decord counts them: the demuxed packets that carry data."""
    av = _av()
    with _open(Path(path)) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"cannot read {path} ({exc}); re-download it, or remove its question") from None


def _decode(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """The wanted frames (RGB arrays) by decode order, and how many frames were decoded in all."""
    av = _av()
    found: dict[int, np.ndarray] = {}
    decoded = 0
    last = max(wanted)
    with _open(path) as container:
        try:
            for decoded, frame in enumerate(container.decode(video=0), start=1):
                index = decoded - 1
                if index in wanted:
                    found[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"cannot decode {path} ({exc}); re-download it, or remove its question") from None
    return found, decoded


def read_frames(path: str | Path, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """``num_frames`` frames of a video, sampled as Video-LLaVA does, as a ``(T, H, W, 3)`` RGB ``uint8`` array.

    If the file decodes to fewer frames than it has packets (a damaged tail), the indices are drawn again over
    the frames that do decode."""
    path = Path(path)
    total = count_frames(path)
    if total < 1:
        raise VideoDecodeError(f"{path} holds no video frame; re-download it, or remove its question")
    indices = sample_indices(total, num_frames)
    found, decoded = _decode(path, set(indices))
    if len(found) < len(set(indices)):
        if decoded < 1:
            raise VideoDecodeError(f"no frame of {path} decodes; re-download it, or remove its question")
        indices = sample_indices(decoded, num_frames)
        found, _ = _decode(path, set(indices))
    return np.stack([found[i] for i in indices])


@dataclass(frozen=True)
class VideoRef:
    """A lazily decoded video: ``ref()`` returns its ``num_frames`` sampled frames (``(T, H, W, 3)`` uint8)."""

    path: Path
    num_frames: int = NUM_FRAMES

    def __call__(self) -> np.ndarray:
        return read_frames(self.path, self.num_frames)

    def __repr__(self) -> str:
        return f"VideoRef(path={str(self.path)!r}, num_frames={self.num_frames})"
