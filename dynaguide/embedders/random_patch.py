"""A weight-free embedder (tests, the BlockTouch toy).

Its latent is **a fixed, seeded random linear projection of raw pixel patches** (then layer-normed per
token): it carries no learned semantics, only the local colour/intensity layout of the image, so distances in
it are a crude pixel-space similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.embedders.protocol import IMAGENET_MEAN, IMAGENET_STD, check_images, resize_images


class RandomPatchEmbedder(nn.Module):
    """Weight-free embedder: fixed seeded random projection of pixel patches (see the module docstring).

    Images are resized to ``image_size`` (bicubic), cut into non-overlapping ``patch_size`` patches,
    centred with the ImageNet mean/std, projected by a Gaussian matrix ``(3 p^2, dim)`` scaled by
    ``1/sqrt(3 p^2)`` drawn from ``seed``, and layer-normed per token (no learned parameters).
    Output ``(B, (image_size / patch_size)^2, dim)``.
    """

    kind = "random"

    def __init__(self, image_size: int = 224, patch_size: int = 14, dim: int = 384, seed: int = 0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_tokens = (image_size // patch_size) ** 2
        fan_in = 3 * patch_size * patch_size
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(fan_in, dim, generator=gen) / fan_in ** 0.5)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        x = (resize_images(images, self.image_size) - self.mean) / self.std
        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size)  # (B, 3p^2, N)
        tokens = patches.transpose(1, 2) @ self.projection
        return F.layer_norm(tokens, (self.dim,))
