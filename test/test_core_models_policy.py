"""Diffusion policy: shapes, protocol, normalisation, conditioning, paper config."""

import pytest
import torch

from dynaguide.config import ConfigError, from_dict, to_dict
from dynaguide.interfaces import NoisePredictionPolicy
from dynaguide.normalization import MinMaxNormalizer
from dynaguide.policy import ConditionalUnet1D, DiffusionPolicy, DiffusionPolicyConfig, SpatialSoftmax



def _obs(cfg, b=3, to=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    to = to or cfg.n_obs_steps
    obs = {k: torch.rand(b, to, 3, cfg.image_size, cfg.image_size, generator=g) for k in cfg.image_keys}
    obs["proprio"] = torch.randn(b, to, cfg.proprio_dim, generator=g)
    return obs


def _policy(**kw):
    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig.cpu(proprio_dim=2, action_dim=2, image_size=32, **kw)
    p = DiffusionPolicy(cfg)
    p.set_normalizer_stats(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 10.0]), -torch.ones(2), torch.ones(2))
    return p


def test_normalizer_maps_range_to_unit_interval_and_back():
    n = MinMaxNormalizer(3)
    n.set_stats(torch.tensor([0.0, -1.0, 5.0]), torch.tensor([4.0, 1.0, 5.0]))  # third feature constant
    x = torch.tensor([[0.0, -1.0, 5.0], [4.0, 1.0, 5.0], [1.0, 0.5, 5.0]])
    y = n.normalize(x)
    assert torch.allclose(y, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-0.5, 0.5, 0.0]]))
    assert torch.allclose(n.unnormalize(y), x)
    with pytest.raises(ValueError, match="last dimension"):
        n.normalize(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="max < min"):
        n.set_stats(torch.ones(3), torch.zeros(3))


def test_policy_implements_protocol_and_shapes():
    p = _policy()
    assert isinstance(p, NoisePredictionPolicy)
    assert (p.horizon, p.action_dim, p.n_obs_steps, p.action_offset) == (16, 2, 2, 0)
    cond = p.encode_observation(_obs(p.cfg))
    assert cond.shape == (3, p.cond_dim) == (3, 2 * (32 + 2))
    x = torch.randn(3, 16, 2)
    eps = p.predict_noise(x, torch.tensor([0, 5, 99]), cond)
    assert eps.shape == (3, 16, 2)
    # one conditioning row broadcasts over a batch of chunks; a scalar timestep over the batch
    shared = p.predict_noise(x, torch.tensor(7), cond[:1])
    assert torch.allclose(shared, p.predict_noise(x, torch.full((3,), 7), cond[:1].expand(3, -1)), atol=1e-6)
    # normalise -> unnormalise is the identity and maps the stats' range to [-1, 1]
    a = torch.tensor([[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0]])
    assert torch.allclose(p.normalize_actions(a), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(p.unnormalize_actions(p.normalize_actions(a)), a)


def test_encode_observation_uses_last_to_steps_and_is_per_sample():
    p = _policy().eval()
    obs = _obs(p.cfg, b=2, to=4)
    last = {k: v[:, -2:] for k, v in obs.items()}
    assert torch.equal(p.encode_observation(obs), p.encode_observation(last))
    one = {k: v[1:2] for k, v in obs.items()}
    assert torch.allclose(p.encode_observation(obs)[1:2], p.encode_observation(one), atol=1e-5)


def test_bad_observations_raise_clear_errors():
    p = _policy()
    obs = _obs(p.cfg)
    with pytest.raises(ValueError, match="missing camera 'rgb'"):
        p.encode_observation({"proprio": obs["proprio"]})
    with pytest.raises(ValueError, match="time steps"):
        p.encode_observation({k: v[:, :1] for k, v in obs.items()})
    with pytest.raises(ValueError, match=r"noisy_actions must be \(B, 16, 2\)"):
        p.predict_noise(torch.randn(3, 8, 2), torch.zeros(3, dtype=torch.long), p.encode_observation(obs))


def test_goal_conditioned_variant_depends_on_goal_image():
    p = _policy(goal_conditioned=True).eval()
    obs = _obs(p.cfg, b=2)
    with pytest.raises(ValueError, match="goal_image"):
        p.encode_observation(obs)
    g1 = dict(obs, goal_image=torch.zeros(2, 3, 32, 32))
    g2 = dict(obs, goal_image=torch.ones(2, 3, 32, 32))
    c1, c2 = p.encode_observation(g1), p.encode_observation(g2)
    assert c1.shape == (2, p.cond_dim) and p.cond_dim == 2 * (32 + 2) + 32
    assert torch.equal(c1[:, :-32], c2[:, :-32]) and not torch.allclose(c1[:, -32:], c2[:, -32:])


def test_spatial_softmax_finds_a_single_hot_spot():
    ss = SpatialSoftmax(1, 1)
    with torch.no_grad():
        ss.to_keypoints.weight.fill_(1.0)
        ss.to_keypoints.bias.zero_()
    fmap = torch.zeros(1, 1, 5, 9)
    fmap[0, 0, 4, 0] = 100.0  # bottom-left corner -> (x, y) = (-1, +1)
    assert torch.allclose(ss(fmap), torch.tensor([[-1.0, 1.0]]), atol=1e-4)


def test_unet_down_up_path_shapes_and_timestep_dependence():
    torch.manual_seed(0)
    net = ConditionalUnet1D(3, 10, down_dims=(16, 32, 64), kernel_size=5, n_groups=8, step_embed_dim=16)
    x, c = torch.randn(2, 16, 3), torch.randn(2, 10)
    out1 = net(x, torch.tensor([1, 1]), c)
    out2 = net(x, torch.tensor([50, 50]), c)
    assert out1.shape == (2, 16, 3) and not torch.allclose(out1, out2)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 10, 3), torch.tensor([1, 1]), c)


def test_config_yaml_round_trip_and_validation():
    cfg = DiffusionPolicyConfig.cpu(n_action_steps=14)
    assert from_dict(DiffusionPolicyConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="n_action_steps"):
        from_dict(DiffusionPolicyConfig, {"n_action_steps": 17})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DiffusionPolicyConfig, {"horizn": 16})


def test_paper_config_instantiates_with_documented_architecture():
    cfg = DiffusionPolicyConfig.paper()
    assert (cfg.n_obs_steps, cfg.horizon, cfg.down_dims, cfg.kernel_size, cfg.n_groups, cfg.step_embed_dim) == (
        2, 16, (256, 512, 1024), 5, 8, 256)
    torch.manual_seed(0)
    p = DiffusionPolicy(cfg)
    assert all(type(m).__name__ != "BatchNorm2d" for m in p.modules())
    feat = p.encoders["rgb_static"].out_dim
    assert feat == 64  # 32 keypoints x (x, y)
    assert p.cond_dim == 2 * (2 * 64 + 15)
    p.set_normalizer_stats(-torch.ones(7), torch.ones(7), -torch.ones(15), torch.ones(15))
    with torch.no_grad():
        cond = p.encode_observation(_obs(cfg, b=1))
        assert p.predict_noise(torch.randn(1, 16, 7), torch.tensor([3]), cond).shape == (1, 16, 7)


def test_random_shift_translates_images_only_in_training():
    p = _policy(random_shift=2)
    img = torch.zeros(1, 2, 3, 32, 32)
    img[..., 10, 20] = 1.0  # one bright pixel
    batch = {"rgb": img, "proprio": torch.zeros(1, 2, 2)}
    shifted = p._shift_images(batch, torch.Generator().manual_seed(0))["rgb"]
    assert shifted.shape == img.shape
    ys, xs = torch.nonzero(shifted[0, 0, 0], as_tuple=True)
    assert len(ys) == 1 and abs(int(ys[0]) - 10) <= 2 and abs(int(xs[0]) - 20) <= 2
    assert torch.equal(shifted[0, 0], shifted[0, 1])  # same shift for both time steps
    moved = {tuple(torch.nonzero(p._shift_images(batch, torch.Generator().manual_seed(s))["rgb"][0, 0, 0])[0].tolist())
             for s in range(30)}
    assert len(moved) > 5  # the shift is random
    assert DiffusionPolicyConfig.paper().random_shift == 4 and DiffusionPolicyConfig.cpu().random_shift == 0
