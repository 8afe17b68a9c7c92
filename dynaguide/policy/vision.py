"""Per-camera image encoders for the diffusion policy.

* :class:`ResNet18GN` — ResNet-18 (written here, no torchvision) with every BatchNorm replaced by
  GroupNorm (``channels // 16`` groups), as in diffusion_policy's robomimic image encoders.
* :class:`SmallCNN` — a three-layer conv net for CPU-sized experiments.
* :class:`SpatialSoftmax` — keypoint head: 1x1 conv to K heat maps, softmax over space, expected
  (x, y) per map → ``2K`` features in [-1, 1].

:class:`ImageEncoder` = backbone + spatial softmax: ``(B, 3, H, W)`` in [0, 1] → ``(B, 2K)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _group_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 trunk with GroupNorm; ``(B, 3, H, W)`` → ``(B, 512, H/32, W/32)``."""

    out_channels = 512

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), _group_norm(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers = []
        in_ch = 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(in_ch, out_ch, stride), _BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class SmallCNN(nn.Module):
    """Three conv layers (stride 2, 2, 1) with GroupNorm; ``(B, 3, H, W)`` → ``(B, C, H/4, W/4)``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.out_channels = width
        half = max(8, width // 2)
        self.net = nn.Sequential(
            nn.Conv2d(3, half, 5, 2, 2), nn.GroupNorm(max(1, half // 8), half), nn.Mish(),
            nn.Conv2d(half, width, 3, 2, 1), nn.GroupNorm(max(1, width // 8), width), nn.Mish(),
            nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(max(1, width // 8), width), nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """``(B, C, h, w)`` feature map → ``(B, 2K)`` expected keypoint coordinates in [-1, 1]."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        self.to_keypoints = nn.Conv2d(in_channels, num_keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        heat = self.to_keypoints(features)
        b, k, h, w = heat.shape
        attention = torch.softmax(heat.reshape(b, k, h * w), dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=heat.device, dtype=heat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=heat.device, dtype=heat.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        expected_x = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([expected_x, expected_y], dim=-1).reshape(b, 2 * k)


class ImageEncoder(nn.Module):
    """One camera's encoder: images ``(B, 3, H, W)`` in [0, 1] → features ``(B, 2 * num_keypoints)``.

    Images are resized to ``image_size`` (bilinear) when they differ and normalised with the
    ImageNet mean/std before the backbone.
    """

    def __init__(self, backbone: str, num_keypoints: int, image_size: int, cnn_width: int = 32) -> None:
        super().__init__()
        if backbone == "resnet18":
            self.backbone: nn.Module = ResNet18GN()
        elif backbone == "small_cnn":
            self.backbone = SmallCNN(cnn_width)
        else:
            raise ValueError(f"unknown image backbone {backbone!r}; expected 'resnet18' or 'small_cnn'")
        self.image_size = image_size
        self.keypoints = SpatialSoftmax(self.backbone.out_channels, num_keypoints)
        self.out_dim = 2 * num_keypoints
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's map ``(B, C, h, w)`` of ``images (B, 3, H, W)`` in [0, 1] (resized, normalised)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.keypoints(self.feature_map(images))
