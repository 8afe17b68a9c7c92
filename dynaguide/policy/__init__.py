"""The base diffusion policy (ConditionalUnet1D + FiLM, per-camera keypoint encoders)."""

from dynaguide.policy.model import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.policy.unet import ConditionalUnet1D
from dynaguide.policy.vision import ImageEncoder, ResNet18GN, SmallCNN, SpatialSoftmax

__all__ = [
    "ConditionalUnet1D", "DiffusionPolicy", "DiffusionPolicyConfig", "ImageEncoder", "ResNet18GN", "SmallCNN",
    "SpatialSoftmax",
]
