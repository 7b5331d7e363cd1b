"""The trained tiny testbed: procedural scenes, questions and a small LLaVA.

``load_split`` gives benchmark samples, ``checkpoint_dir()`` the trained model
(``LlavaForConditionalGeneration`` + ``LlavaProcessor`` there, the full
``CLIPModel`` + tokenizer in ``clip/``). ``vlprune testbed build`` retrains it.
"""

from __future__ import annotations

from pathlib import Path

from .answer import boxes_to_patch_mask, is_correct, normalize_answer
from .scenes import FAMILIES, Sample, load_split, prompt_for

__all__ = ["FAMILIES", "Sample", "boxes_to_patch_mask", "checkpoint_dir", "is_correct", "load_split",
           "normalize_answer", "prompt_for"]


def checkpoint_dir() -> Path:
    """Folder of the packaged testbed checkpoint (``clip/`` inside it)."""
    return Path(__file__).resolve().parent / "checkpoint"
