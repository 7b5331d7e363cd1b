"""vlprune — training-free visual-token pruning for vision-language models in Hugging Face transformers.

    import vlprune
    vlprune.apply(model, "desap", keep=64, processor=processor, clip="openai/clip-vit-large-patch14-336")
    vlprune.remove(model)
"""
from .api import KeptTokens, apply, last_selection, pruned, remove
from .registry import methods

__all__ = ["apply", "remove", "pruned", "last_selection", "methods", "KeptTokens"]
__version__ = "0.1.0"
