"""Embedders: the real transformers Dinov2Model (tiny random config) and the offline random one."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from dynaguide.embedders.dinov2 import DinoV2Embedder
from dynaguide.embedders.factory import EmbedderConfig, make_embedder
from dynaguide.embedders.identity import embedder_fingerprint
from dynaguide.embedders.protocol import IMAGENET_MEAN, IMAGENET_STD, PatchEmbedder
from dynaguide.embedders.random_patch import RandomPatchEmbedder



def _tiny_config():
    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        patch_size=8, image_size=32)


def test_dinov2_tokens_match_calling_dinov2model_directly():
    emb = DinoV2Embedder.from_config(_tiny_config(), image_size=32, seed=0)
    assert isinstance(emb, PatchEmbedder)
    assert (emb.num_tokens, emb.dim, emb.image_size) == ((32 // 8) ** 2, 32, 32)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = emb(images)
    assert tokens.shape == (2, 16, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    direct = emb.model(pixel_values=(images - mean) / std).last_hidden_state
    assert direct.shape == (2, 1 + 16, 32)
    assert torch.equal(tokens, direct[:, 1:])  # patch tokens, CLS dropped
    # last layer-normed: each token has ~zero mean / unit variance before the affine (default affine = identity)
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 16), atol=1e-5)


def test_dinov2_resizes_to_its_image_size_and_is_frozen():
    emb = DinoV2Embedder.from_config(_tiny_config(), image_size=48)
    assert emb.num_tokens == 36
    big = torch.rand(1, 3, 100, 80)
    assert emb(big).shape == (1, 36, 32)
    assert all(not p.requires_grad for p in emb.parameters())
    assert not emb(torch.rand(1, 3, 32, 32, requires_grad=True)).requires_grad  # no graph kept
    emb.train()
    assert not emb.model.training
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoV2Embedder(Dinov2Model(_tiny_config()), image_size=30)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        emb(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        emb(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_dinov2_loads_from_a_local_directory(tmp_path):
    torch.manual_seed(0)
    model = Dinov2Model(_tiny_config())
    model.save_pretrained(tmp_path / "tiny")
    emb = make_embedder(EmbedderConfig(kind="dinov2", model=str(tmp_path / "tiny"), image_size=32))
    images = torch.rand(1, 3, 32, 32)
    ref = DinoV2Embedder(model.eval(), 32)
    assert torch.equal(emb(images), ref(images))
    with pytest.raises(ValueError, match="cannot load DINOv2"):
        make_embedder(EmbedderConfig(kind="dinov2", model=str(tmp_path / "missing"), image_size=32))


def test_random_patch_embedder_is_a_seeded_per_patch_projection():
    emb = RandomPatchEmbedder(image_size=32, patch_size=8, dim=24, seed=3)
    assert (emb.num_tokens, emb.dim) == (16, 24)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = emb(img)
    assert tokens.shape == (1, 16, 24)
    assert torch.equal(tokens, RandomPatchEmbedder(32, 8, 24, seed=3)(img))
    assert not torch.allclose(tokens, RandomPatchEmbedder(32, 8, 24, seed=4)(img))
    # changing the pixels of patch (row 1, col 2) changes token 1 * 4 + 2 only
    edited = img.clone()
    edited[:, :, 8:16, 16:24] = 1.0 - edited[:, :, 8:16, 16:24]
    diff = (emb(edited) - tokens).abs().sum(-1)[0]
    assert diff[6] > 0 and torch.equal(diff[torch.arange(16) != 6], torch.zeros(15))
    # known answer for one token: layer_norm(normalised patch pixels @ projection)
    x = (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    patch = x[0, :, 8:16, 16:24].reshape(-1)  # channel-major, as unfold orders it
    assert torch.allclose(tokens[0, 6], F.layer_norm(patch @ emb.projection, (24,)), atol=1e-5)
    assert embedder_fingerprint(emb) != embedder_fingerprint(RandomPatchEmbedder(32, 8, 24, seed=4))


def test_embedder_config_validation():
    with pytest.raises(ValueError, match="needs `model`"):
        EmbedderConfig(kind="dinov2")
    with pytest.raises(ValueError, match="kind"):
        EmbedderConfig(kind="clip")
    assert make_embedder(EmbedderConfig(kind="random")).num_tokens == 256  # 224 px / 14 px patches
    assert make_embedder(EmbedderConfig()).num_tokens == 64                 # default: EfficientNet-Lite0, 128 px / 16
