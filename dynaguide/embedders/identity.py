"""What names an embedder's latent space.

:func:`embedder_identity` (kind, full SHA-256 of the weights, geometry) and the short string
:func:`embedder_id` derived from it (``"efficientnet_lite0@128/s16:<12 hex>"``) name the latent space an
embedder produces; the ROS ``PatchEmbedding.embedder_id`` field carries it, dynamics checkpoints record
the identity they were trained on, and :func:`embedder_fingerprint` (16 hex of the same digest) keys
embedding caches.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import nn


def weights_sha256(module: nn.Module) -> str:
    """Full SHA-256 (64 hex) over a module's ``state_dict``: for every entry in sorted key order its name,
    dtype, shape and raw bytes.  Deterministic across processes and constructions."""
    h = hashlib.sha256()
    state = module.state_dict() if hasattr(module, "state_dict") else {}
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def embedder_identity(embedder: Any) -> dict[str, Any]:
    """What defines the latent space of ``embedder`` (a JSON-friendly dict).

    Keys: ``kind`` (``"efficientnet_lite0"``, ``"dinov2"``, ``"random"``, else the class name),
    ``weights_sha256`` (:func:`weights_sha256`), ``image_size`` (px), ``grid`` ``[h, w]``, ``dim``,
    ``stride`` (EfficientNet) or ``patch_size`` (ViT / random), and ``normalization`` ``{"mean", "std"}``
    when the embedder normalises pixels itself (6 decimals).
    """
    kind = getattr(embedder, "kind", None) or type(embedder).__name__
    grid = getattr(embedder, "grid", None)
    if grid is None:
        side = math.isqrt(int(embedder.num_tokens))
        grid = (side, side)
    identity: dict[str, Any] = {"kind": str(kind), "weights_sha256": weights_sha256(embedder),
                                "image_size": int(embedder.image_size), "grid": [int(grid[0]), int(grid[1])],
                                "dim": int(embedder.dim)}
    if getattr(embedder, "stride", None) is not None:
        identity["stride"] = int(embedder.stride)
    elif getattr(embedder, "patch_size", None) is not None:
        identity["patch_size"] = int(embedder.patch_size)
    mean, std = getattr(embedder, "mean", None), getattr(embedder, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        identity["normalization"] = {"mean": [round(float(v), 6) for v in mean.flatten()],
                                     "std": [round(float(v), 6) for v in std.flatten()]}
    return identity


def _identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def embedder_id_from_identity(identity: dict[str, Any]) -> str:
    """The short id of an :func:`embedder_identity` dict: ``"<kind>@<image_size>/s<stride>:<12 hex>"``
    (``/p<patch>`` for patch embedders); the hex is the SHA-256 of the canonical JSON of the whole identity."""
    if not isinstance(identity, dict) or not {"kind", "image_size"} <= set(identity):
        raise ValueError(f"not an embedder identity: {identity!r}")
    if "stride" in identity:
        geometry = f"/s{identity['stride']}"
    elif "patch_size" in identity:
        geometry = f"/p{identity['patch_size']}"
    else:
        geometry = ""
    return f"{identity['kind']}@{identity['image_size']}{geometry}:{_identity_digest(identity)[:12]}"


def embedder_id(embedder: Any) -> str:
    """Short string naming ``embedder``'s latent space, e.g. ``"efficientnet_lite0@128/s16:3f2a9c0d1e4b"``.
    Tokens with different ids never mix (the ROS ``PatchEmbedding.embedder_id``)."""
    return embedder_id_from_identity(embedder_identity(embedder))


def embedder_fingerprint(embedder: Any) -> str:
    """16 hex identifying an embedder's kind, geometry and weights (keys embedding caches); the first 12
    are the hex of :func:`embedder_id`."""
    return _identity_digest(embedder_identity(embedder))[:16]
