"""Which embedder to build (:class:`EmbedderConfig`) and building it (:func:`make_embedder`)."""

from __future__ import annotations

from dataclasses import dataclass

from dynaguide.embedders.dinov2 import DinoV2Embedder
from dynaguide.embedders.efficientnet import EFFICIENTNET_STRIDES, EfficientNetLite0Embedder
from dynaguide.embedders.random_patch import RandomPatchEmbedder

KINDS = ("efficientnet_lite0", "random", "dinov2")
DEFAULT_IMAGE_SIZE = {"efficientnet_lite0": 128, "random": 224, "dinov2": 224}


@dataclass
class EmbedderConfig:
    """Which embedder to build (:func:`make_embedder`).

    ``kind``: ``"efficientnet_lite0"`` (default: pretrained, shipped with a PyPI wheel), ``"dinov2"``
    (``model`` = local dir or hub id) or ``"random"`` (weight-free, tests).
    ``image_size`` (px, the square side images are resized to): ``None`` = the kind's default —
    128 for ``efficientnet_lite0``, 224 for ``dinov2`` (ViT-S/14: 16x16 patches) and ``random``; it is
    resolved in ``__post_init__``, so a built config always holds a number.
    ``stride`` (8, 16 or 32) picks the EfficientNet stage whose feature map becomes the tokens:
    ``(image_size / stride)^2`` tokens of 40 / 112 / 320 channels.
    ``patch_size``, ``dim`` and ``seed`` apply to the random embedder only (DINOv2 and EfficientNet take them
    from their weights).
    """

    kind: str = "efficientnet_lite0"
    model: str | None = None
    image_size: int | None = None
    patch_size: int = 14
    dim: int = 384
    seed: int = 0
    stride: int = 16
    local_files_only: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"embedder kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        if self.kind == "dinov2" and not self.model:
            raise ValueError("embedder kind 'dinov2' needs `model` (a local directory or hub id)")
        if self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE[self.kind]
        if self.image_size <= 0 or self.patch_size <= 0 or self.dim <= 0:
            raise ValueError("image_size, patch_size and dim must be positive")
        if self.kind == "random" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.kind == "efficientnet_lite0":
            if self.stride not in EFFICIENTNET_STRIDES:
                raise ValueError(f"efficientnet_lite0 stride must be one of {EFFICIENTNET_STRIDES}, got {self.stride}")
            if self.image_size % self.stride:
                raise ValueError(f"image_size {self.image_size} must be a multiple of stride {self.stride}")


def make_embedder(cfg: EmbedderConfig) -> EfficientNetLite0Embedder | DinoV2Embedder | RandomPatchEmbedder:
    """Build the embedder ``cfg`` describes (EfficientNet-Lite0 from the shipped weights, DINOv2 from
    ``cfg.model``, or the weight-free random one)."""
    if cfg.kind == "efficientnet_lite0":
        return EfficientNetLite0Embedder.pretrained(cfg.image_size, cfg.stride)
    if cfg.kind == "dinov2":
        return DinoV2Embedder.from_pretrained(cfg.model, cfg.image_size, cfg.local_files_only)
    return RandomPatchEmbedder(cfg.image_size, cfg.patch_size, cfg.dim, cfg.seed)
