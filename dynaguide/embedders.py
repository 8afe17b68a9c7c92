"""Image → patch-token embedders φ(o): ``images (B, 3, H, W)`` float in [0, 1] → ``tokens (B, N, D)``.

* :class:`DinoV2Embedder` — the paper's embedder: ``transformers.Dinov2Model`` (ViT-S/14 at 224x224 →
  256 patch tokens x 384), ImageNet normalisation, the **last layer-normed patch tokens without CLS**
  (and without register tokens).  Weights come from a local directory or hub id (safetensors only), or
  a ``Dinov2Config`` gives random weights (tests).  Frozen.
* :class:`RandomPatchEmbedder` — the offline default, needing no downloads.  Its latent is **a fixed,
  seeded random linear projection of raw pixel patches** (then layer-normed per token): it carries
  no learned semantics, only the local colour/intensity layout of the image, so distances in it are a
  crude pixel-space similarity.  Good enough for simple synthetic scenes; use DINOv2 for real images.

Both run under ``torch.no_grad()``: observation and goal tokens are constants for guidance (the
gradient is taken w.r.t. the action chunk only), so no graph is kept through the embedder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class PatchEmbedder(Protocol):
    """``__call__(images (B, 3, H, W) in [0, 1]) -> (B, num_tokens, dim)``."""

    num_tokens: int
    dim: int
    image_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EmbedderConfig:
    """``kind``: ``"random"`` (offline default) or ``"dinov2"`` (``model`` = local dir or hub id).

    ``patch_size``, ``dim`` and ``seed`` apply to the random embedder only (DINOv2 takes them from its weights).
    """

    kind: str = "random"
    model: str | None = None
    image_size: int = 224
    patch_size: int = 14
    dim: int = 384
    seed: int = 0
    local_files_only: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("random", "dinov2"):
            raise ValueError(f"embedder kind must be 'random' or 'dinov2', got {self.kind!r}")
        if self.kind == "dinov2" and not self.model:
            raise ValueError("embedder kind 'dinov2' needs `model` (a local directory or hub id)")
        if self.image_size <= 0 or self.patch_size <= 0 or self.dim <= 0:
            raise ValueError("image_size, patch_size and dim must be positive")
        if self.kind == "random" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) float tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (divide uint8 by 255)")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


class DinoV2Embedder(nn.Module):
    """Frozen ``Dinov2Model``: images resized to ``image_size``, ImageNet-normalised → ``(B, (S/p)^2, hidden)``."""

    def __init__(self, model, image_size: int = 224) -> None:
        super().__init__()
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
        self.num_tokens = (image_size // patch) ** 2
        self.dim = int(model.config.hidden_size)
        self._skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, image_size: int = 224,
                        local_files_only: bool = True) -> "DinoV2Embedder":
        """Load weights from a local directory or hub id (no download unless ``local_files_only=False``)."""
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(name_or_path, local_files_only=local_files_only, use_safetensors=True)
        except OSError as exc:
            raise ValueError(f"cannot load DINOv2 weights from {name_or_path!r}: {exc}") from exc
        return cls(model, image_size)

    @classmethod
    def from_config(cls, config, image_size: int | None = None, seed: int = 0) -> "DinoV2Embedder":
        """Random weights from a ``transformers.Dinov2Config`` (tests); ``image_size`` defaults to the config's."""
        from transformers import Dinov2Model

        torch.manual_seed(seed)
        return cls(Dinov2Model(config), image_size or int(config.image_size))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → resized, ImageNet-normalised pixel values ``(B, 3, S, S)``."""
        _check_images(images)
        return (_resize(images, self.image_size) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self.preprocess(images))
        return out.last_hidden_state[:, self._skip:]

    def train(self, mode: bool = True) -> "DinoV2Embedder":  # always frozen in eval mode
        super().train(False)
        return self


class RandomPatchEmbedder(nn.Module):
    """Offline embedder: fixed seeded random projection of pixel patches (see module docstring).

    Images are resized to ``image_size`` (bicubic), cut into non-overlapping ``patch_size`` patches,
    centred with the ImageNet mean/std, projected by a Gaussian matrix ``(3 p^2, dim)`` scaled by
    ``1/sqrt(3 p^2)`` drawn from ``seed``, and layer-normed per token (no learned parameters).
    Output ``(B, (image_size / patch_size)^2, dim)``.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, dim: int = 384, seed: int = 0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.num_tokens = (image_size // patch_size) ** 2
        fan_in = 3 * patch_size * patch_size
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(fan_in, dim, generator=gen) / fan_in ** 0.5)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        x = (_resize(images, self.image_size) - self.mean) / self.std
        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size)  # (B, 3p^2, N)
        tokens = patches.transpose(1, 2) @ self.projection
        return F.layer_norm(tokens, (self.dim,))


def make_embedder(cfg: EmbedderConfig) -> DinoV2Embedder | RandomPatchEmbedder:
    """Build the embedder ``cfg`` describes (DINOv2 from ``cfg.model``, or the offline random one)."""
    if cfg.kind == "dinov2":
        return DinoV2Embedder.from_pretrained(cfg.model, cfg.image_size, cfg.local_files_only)
    return RandomPatchEmbedder(cfg.image_size, cfg.patch_size, cfg.dim, cfg.seed)


def embedder_fingerprint(embedder: nn.Module) -> str:
    """A short string identifying an embedder's kind, geometry and weights (used to key embedding caches)."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"{type(embedder).__name__}:{getattr(embedder, 'image_size', '')}:{getattr(embedder, 'num_tokens', '')}:"
             f"{getattr(embedder, 'dim', '')}".encode())
    for name, tensor in sorted(embedder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes()[:4096])
        h.update(str(float(tensor.float().sum())).encode())
    return h.hexdigest()[:16]
