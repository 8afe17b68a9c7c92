"""The embedder protocol and the input conventions every embedder here shares.

An embedder maps ``images (B, 3, H, W)`` float in [0, 1] to ``tokens (B, num_tokens, dim)``; it resizes its
input to ``image_size`` px with :func:`resize_images` and refuses other input with :func:`check_images`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class PatchEmbedder(Protocol):
    """``__call__(images (B, 3, H, W) in [0, 1]) -> (B, num_tokens, dim)``."""

    num_tokens: int
    dim: int
    image_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def check_images(images: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a ``(B, 3, H, W)`` floating-point tensor (values in [0, 1])."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) float tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, 3, size, size)``, bicubic with antialiasing (unchanged if already that size):
    the resize every embedder here applies to its input."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
