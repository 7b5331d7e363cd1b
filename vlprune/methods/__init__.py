"""Built-in methods; importing this package registers them."""
from . import desap, fastv, random_, visionzip, vispruner  # noqa: F401
