"""The trained tiny testbed: procedural scenes, questions and a small LLaVA.

``load()`` gives ``(model, processor, samples)`` ready for ``vlprune.apply``;
``load_split`` the benchmark samples alone, ``checkpoint_dir()`` the trained model
(``LlavaForConditionalGeneration`` + ``LlavaProcessor`` there, the full
``CLIPModel`` + tokenizer in ``clip/`` = ``clip_dir()``). ``vlprune testbed build --out DIR``
trains a new one.
"""

from __future__ import annotations

from .answer import boxes_to_patch_mask, is_correct, normalize_answer
from .loader import Testbed, checkpoint_dir, clip_dir, load
from .scenes import FAMILIES, Sample, load_split, prompt_for

__all__ = ["FAMILIES", "Sample", "Testbed", "boxes_to_patch_mask", "checkpoint_dir", "clip_dir", "is_correct",
           "load", "load_split", "normalize_answer", "prompt_for"]
