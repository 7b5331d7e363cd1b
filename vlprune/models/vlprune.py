"""Where ``LMMS_EVAL_PLUGINS=vlprune`` finds the lmms-eval model (``vlprune.models.vlprune.VlpruneLMM``)."""
from ..lmms_plugin import VlpruneLMM

__all__ = ["VlpruneLMM"]
