"""Built-in methods; importing this package registers them."""
from . import desap, fastv, random_, visionzip, vispruner  # noqa: F401
from . import asap, visiondrop  # noqa: F401  (in-LLM: ASAP, fastv+bimask; hybrid: VisionDrop)
from . import hired, prumerge  # noqa: F401  (hired; prumerge, prumerge+)
from . import flowcut, holov  # noqa: F401  (encoder-side: FlowCut inside the tower, HoloV)
from . import sparsevlm  # noqa: F401  (in-LLM: SparseVLM)
from . import pdrop, v2drop  # noqa: F401  (in-LLM: PyramidDrop, V2Drop)
