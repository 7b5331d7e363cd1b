"""The ``lmms_eval.models`` entry point: lmms-eval (0.7) calls ``manifest()`` when it builds its model registry.

It must name the class, not be the class: lmms-eval calls a callable entry point to get its manifest, so pointing
the entry point at ``VlpruneLMM`` itself would instantiate the model (and fetch its default checkpoint) at import.
"""
from __future__ import annotations

from typing import Any

MODEL_ID = "vlprune"
CLASS_PATH = "vlprune.lmms_plugin.VlpruneLMM"


def manifest() -> Any:
    """lmms-eval's ``ModelManifest`` for ``--model vlprune`` (the class is imported only when that model is used)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
