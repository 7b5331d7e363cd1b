"""Model-family adapters, matched by class name so no transformers class is imported or patched."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .video_llava import VideoLlavaAdapter

ADAPTERS: list[type[Adapter]] = [LlavaAdapter, LlavaNextAdapter, Qwen2_5_VLAdapter, VideoLlavaAdapter]


def get_adapter(model: nn.Module, options: dict[str, Any] | None = None) -> Adapter:
    name = type(model).__name__
    for cls in ADAPTERS:
        if name in cls.class_names:
            options = dict(options or {})
            unknown = sorted(set(options) - set(cls.options))
            if unknown:
                raise TypeError(
                    f"the {cls.family} adapter has no option(s) {unknown}; its options are {list(cls.options) or 'none'}"
                )
            return cls(model, **options)
    supported = sorted(n for cls in ADAPTERS for n in cls.class_names)
    raise NotImplementedError(f"vlprune does not support {name}; supported model classes: {', '.join(supported)}")


# lmms-eval's LMMS_EVAL_PLUGINS=vlprune looks here: model name -> class in vlprune.models.<name>
AVAILABLE_MODELS = {"vlprune": "VlpruneLMM"}
