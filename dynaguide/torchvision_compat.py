"""Import ``torchvision`` next to a CPU-only torch whose torchvision wheel carries CUDA-linked ops.

torchvision 0.28.0 is the release built for torch 2.13 (what LeRobot's diffusion policy needs), but the PyPI
wheel's compiled operators link against a CUDA torch and do not load beside the CPU build.  Its import then
dies registering fake kernels for ``torchvision::nms`` (``RuntimeError: operator torchvision::nms does not
exist``) — and so does anything that imports torchvision when it is installed, such as
``transformers``' ``Dinov2Model``.  :func:`ensure_torchvision_importable` declares the two op schemas that
import needs, so torchvision's pure-Python models and transforms work (``torchvision.ops.nms`` itself still
raises when called).  It is a no-op when torchvision is absent or imports normally.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import torch

_FAKE_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment: torch.library.Library | None = None  # kept alive: dropping it undefines the ops
notes: list[str] = []
"""What :func:`ensure_torchvision_importable` had to work around in this process (empty when nothing)."""


def ensure_torchvision_importable() -> Any | None:
    """``import torchvision`` (declaring ``torchvision::nms``/``qnms`` first if its compiled ops cannot load);
    returns the module, or None when torchvision is not installed."""
    global _fragment
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import's half-initialised submodules
    fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _FAKE_OPS:
        fragment.define(schema)
    _fragment = fragment
    import torchvision

    notes.append(f"torchvision {torchvision.__version__}: compiled ops unavailable next to torch {torch.__version__}; "
                 "declared nms/qnms schemas so it imports (models/transforms work)")
    return torchvision
