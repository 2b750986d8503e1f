"""LineGuard edge service: camera -> preprocess -> engines -> decision -> PLC / sink / metrics.

This package must never import torch; the training toolkit lives in ``lineguard_models``.
"""

__version__ = "0.1.0"
