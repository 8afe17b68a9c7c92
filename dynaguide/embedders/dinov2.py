"""The paper's embedder: a frozen ``transformers.Dinov2Model``.

ViT-S/14 at 224x224 → 256 patch tokens x 384, ImageNet normalisation, the **last layer-normed patch tokens
without CLS** (and without register tokens).  Weights come from a local directory or hub id (safetensors
only), or a ``Dinov2Config`` gives random weights (tests).
"""

from __future__ import annotations

import torch
from torch import nn

from dynaguide.embedders.protocol import IMAGENET_MEAN, IMAGENET_STD, check_images, resize_images
from dynaguide.torchvision_compat import ensure_torchvision_importable


class DinoV2Embedder(nn.Module):
    """Frozen ``Dinov2Model``: images resized to ``image_size``, ImageNet-normalised → ``(B, (S/p)^2, hidden)``."""

    kind = "dinov2"

    def __init__(self, model, image_size: int = 224) -> None:
        super().__init__()
        ensure_torchvision_importable()  # transformers imports it when installed
        from transformers import Dinov2Model

        if not isinstance(model, Dinov2Model):
            raise ValueError(f"expected a transformers.Dinov2Model, got {type(model).__name__}")
        patch = int(model.config.patch_size)
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {patch}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.image_size = image_size
        self.patch_size = patch
        self.grid = (image_size // patch, image_size // patch)
        self.num_tokens = (image_size // patch) ** 2
        self.dim = int(model.config.hidden_size)
        self._skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, image_size: int = 224,
                        local_files_only: bool = True) -> DinoV2Embedder:
        """Load weights from a local directory or hub id (no download unless ``local_files_only=False``)."""
        ensure_torchvision_importable()  # transformers imports it when installed
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(name_or_path, local_files_only=local_files_only, use_safetensors=True)
        except OSError as exc:
            raise ValueError(f"cannot load DINOv2 weights from {name_or_path!r}: {exc}") from exc
        return cls(model, image_size)

    @classmethod
    def from_config(cls, config, image_size: int | None = None, seed: int = 0) -> DinoV2Embedder:
        """Random weights from a ``transformers.Dinov2Config`` (tests); ``image_size`` defaults to the config's."""
        ensure_torchvision_importable()  # transformers imports it when installed
        from transformers import Dinov2Model

        torch.manual_seed(seed)
        return cls(Dinov2Model(config), image_size or int(config.image_size))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → resized, ImageNet-normalised pixel values ``(B, 3, S, S)``."""
        check_images(images)
        return (resize_images(images, self.image_size) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self.preprocess(images))
        return out.last_hidden_state[:, self._skip:]

    def train(self, mode: bool = True) -> DinoV2Embedder:  # always frozen in eval mode
        super().train(False)
        return self
