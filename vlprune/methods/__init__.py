"""Built-in methods; importing this package registers them."""
from . import desap, fastv, random_, visionzip, vispruner  # noqa: F401
from . import asap, visiondrop  # noqa: F401  (in-LLM: ASAP, fastv+bimask; hybrid: VisionDrop)
from . import prumerge  # noqa: F401  (prumerge, prumerge+)
