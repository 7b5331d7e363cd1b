"""Lets a CUDA build of torchvision import next to the CPU build of torch (``.venv-vllm`` only).

PyPI's torchvision wheels are CUDA builds: their compiled ops (``torchvision._C``: nms, roi_align, ...) need
``libtorch_cuda.so``, which torch 2.13.0+cpu lacks. torchvision then dies at import, registering fake kernels
for ops that were never loaded, and so does transformers (it imports torchvision when installed), and vLLM with
it. vLLM's CPU install takes ``torchvision+cpu`` from the PyTorch index, which these machines cannot reach.

This hook runs at interpreter start (``vlprune_torchvision_cpu.pth``) and does nothing until ``torchvision`` is
imported. Then, if torchvision's ops do not load against this torch, it skips the two modules that register
kernels for them: image transforms work (they are plain torch), ``torchvision.ops`` raise when called.
Installed by ``make env-vllm``; not part of the vlprune package.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
import warnings

_SKIPPED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def _ops_load(package_dir: str) -> bool:
    import torch

    for name in os.listdir(package_dir):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(package_dir, name))
                return True
            except OSError:
                return False
    return False


class _TorchvisionWithoutOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # look once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.submodule_search_locations:
            return spec
        if not _ops_load(list(spec.submodule_search_locations)[0]):
            for name in _SKIPPED:
                sys.modules.setdefault(name, types.ModuleType(name))
            warnings.warn(
                "torchvision's compiled ops do not load against this torch (a CUDA torchvision beside CPU torch): "
                "image transforms work, torchvision.ops (nms, roi_align, ...) are unavailable",
                RuntimeWarning, stacklevel=2,
            )
        return spec


def install() -> None:
    if not any(isinstance(f, _TorchvisionWithoutOps) for f in sys.meta_path) and "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _TorchvisionWithoutOps())
