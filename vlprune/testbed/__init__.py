"""The trained tiny testbed: procedural scenes, questions and a small LLaVA.

``load()`` gives ``(model, processor, samples)`` ready for ``vlprune.apply``;
``load_split`` the benchmark samples alone, ``checkpoint_dir()`` the trained model
(``LlavaForConditionalGeneration`` + ``LlavaProcessor`` there, the full
``CLIPModel`` + tokenizer in ``clip/`` = ``clip_dir()``). ``vlprune testbed build --out DIR``
trains a new one. ``load_video()`` / ``load_video_split`` / ``video_checkpoint_dir()``: the video testbed
(4-frame clips, a Video-LLaVA fine-tuned from this one; ``vlprune testbed build-video --out DIR``).
``load(deep=True)`` / ``deep_checkpoint_dir()``: ``testbed-deep``, the same scenes and CLIP under a 6-layer LLM (for
in-LLM methods at the papers' relative depth; docs/testbed.md).
"""

from __future__ import annotations

from .answer import boxes_to_patch_mask, is_correct, normalize_answer
from .loader import (BUNDLED, Testbed, checkpoint_dir, clip_dir, deep_checkpoint_dir, load, load_video,
                     video_checkpoint_dir)
from .scenes import FAMILIES, Sample, load_split, prompt_for
from .video_scenes import VideoSample, load_video_split

__all__ = ["BUNDLED", "FAMILIES", "Sample", "Testbed", "boxes_to_patch_mask", "checkpoint_dir", "clip_dir",
           "deep_checkpoint_dir", "is_correct", "load", "load_split", "load_video", "load_video_split",
           "normalize_answer", "prompt_for", "video_checkpoint_dir", "VideoSample"]
