"""Latent dynamics model and the noise augmentation distribution."""

import pytest
import torch

from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.dynamics import (
    LatentDynamicsConfig,
    LatentDynamicsModel,
    noise_actions_for_dynamics,
    sample_geometric_steps,
)



def test_paper_config_shapes():
    cfg = LatentDynamicsConfig.paper()
    assert (cfg.in_tokens, cfg.out_tokens, cfg.n_layers, cfg.n_heads, cfg.model_dim) == (258, 256, 6, 8, 384)
    torch.manual_seed(0)
    m = LatentDynamicsModel(cfg)
    assert len(m.encoder.layers) == 6 and m.encoder.layers[0].self_attn.num_heads == 8
    assert m.pos_embedding.shape == (1, 258, 384)
    assert m.action_step_in.out_features == 384 // 16  # each step embedded to D/T, concatenated to D
    with torch.no_grad():
        out = m(torch.randn(2, 256, 384), torch.randn(2, 15), torch.rand(2, 16, 7) * 2 - 1)
    assert out.shape == (2, 256, 384)
    tokens = torch.randn(2, 256, 384)
    assert torch.equal(m.outcome_latent(tokens), tokens)  # identity for the paper config


def test_cpu_config_pools_the_patch_grid():
    cfg = LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, proprio_dim=2, action_dim=2, model_dim=32,
                                   n_heads=4, pool=2)
    m = LatentDynamicsModel(cfg)
    assert (cfg.out_tokens, cfg.in_tokens) == (4, 6)
    # token index = row * 4 + col of a 4x4 grid; value = index -> pooled 2x2 means are known
    tokens = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 8)
    pooled = m.outcome_latent(tokens)[0, :, 0]
    assert torch.equal(pooled, torch.tensor([2.5, 4.5, 10.5, 12.5]))
    out = m(torch.randn(3, 16, 8), torch.randn(3, 2), torch.randn(3, 16, 2))
    assert out.shape == (3, 4, 8)


def test_prediction_depends_on_every_action_step_and_is_per_sample():
    torch.manual_seed(0)
    cfg = LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, proprio_dim=2, action_dim=2, model_dim=32,
                                   n_heads=4, pool=2, n_layers=2)
    m = LatentDynamicsModel(cfg).eval()
    m.set_normalizer_stats(-torch.ones(2), torch.ones(2), -torch.ones(2), torch.ones(2))
    tok, prop = torch.randn(4, 16, 8), torch.randn(4, 2)
    actions = torch.randn(4, 16, 2, requires_grad=True)
    out = m(tok, prop, actions)
    grad, = torch.autograd.grad(out[1].sum(), actions)
    assert (grad[1].abs().sum(-1) > 0).all()  # every step of sample 1 matters
    assert torch.equal(grad[[0, 2, 3]], torch.zeros_like(grad[[0, 2, 3]]))  # other samples do not
    # a single observation broadcasts against a batch of candidate chunks
    single = m(tok[:1], prop[:1], actions.detach())
    assert torch.allclose(single[0], m(tok[:1], prop[:1], actions.detach()[:1])[0], atol=1e-5)


def test_bad_shapes_raise():
    m = LatentDynamicsModel(LatentDynamicsConfig.cpu())
    with pytest.raises(ValueError, match="tokens must be"):
        m(torch.randn(1, 10, 384), torch.randn(1, 15), torch.randn(1, 16, 7))
    with pytest.raises(ValueError, match="actions must be"):
        m(torch.randn(1, 256, 384), torch.randn(1, 15), torch.randn(1, 15, 7))
    with pytest.raises(ValueError, match="proprio must be"):
        m(torch.randn(1, 256, 384), None, torch.randn(1, 16, 7))
    with pytest.raises(ValueError, match="divisible by horizon"):
        LatentDynamicsConfig(model_dim=100)


def test_geometric_steps_have_the_documented_distribution():
    g = torch.Generator().manual_seed(0)
    k = sample_geometric_steps(200_000, 0.05, max_step=10_000, generator=g)
    assert k.min() == 1
    assert abs(k.float().mean().item() - 20.0) < 0.3  # mean 1/p; sd 19.5 -> s.e. 0.04
    assert abs((k == 1).float().mean().item() - 0.05) < 0.003  # P(1) = p
    assert abs((k <= 20).float().mean().item() - (1 - 0.95**20)) < 0.005  # CDF
    clipped = sample_geometric_steps(200_000, 0.05, max_step=30, generator=g)
    assert clipped.max() == 30
    assert abs((clipped == 30).float().mean().item() - 0.95**29) < 0.005


def test_noise_augmentation_share_steps_and_scheduler_noise():
    scheduler = make_ddim_scheduler(DDIMConfig())  # 100 train steps: clip at 99
    g = torch.Generator().manual_seed(1)
    actions = torch.rand(40_000, 16, 2) * 2 - 1
    noisy, t = noise_actions_for_dynamics(actions, scheduler, g)
    clean = t < 0
    assert abs(clean.float().mean().item() - 0.5) < 0.01
    assert torch.equal(noisy[clean], actions[clean])
    steps = t[~clean]
    assert steps.min() >= 1 and steps.max() <= 99
    expected_mean = (1 - 0.95**99) / 0.05  # E[min(K, 99)] for K ~ Geometric(0.05) on {1, 2, ...}
    assert abs(steps.float().mean().item() - expected_mean) < 0.4
    # the noised samples are exactly the scheduler's forward process at their step
    b = int(torch.nonzero(~clean)[0])
    ab = scheduler.alphas_cumprod[t[b]]
    eps = (noisy[b] - ab.sqrt() * actions[b]) / (1 - ab).sqrt()
    assert abs(eps.std().item() - 1.0) < 0.35 and not torch.allclose(noisy[b], actions[b])
    with pytest.raises(ValueError, match="noised_fraction"):
        noise_actions_for_dynamics(actions[:2], scheduler, g, noised_fraction=1.5)


def test_compatibility_check_between_dynamics_and_policy():
    from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(proprio_dim=2, action_dim=2, image_size=16, num_keypoints=4,
                                                       down_dims=(16, 32), step_embed_dim=16, cnn_width=8))
    dyn = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, pool=2, model_dim=32, n_heads=4,
                                                       n_layers=1, proprio_dim=2, action_dim=2))
    with pytest.raises(ValueError, match="not set"):
        dyn.check_compatible_with(policy)
    policy.set_normalizer_stats(-torch.ones(2), torch.ones(2), -torch.ones(2), torch.ones(2))
    dyn.set_normalizer_stats(-torch.ones(2), torch.ones(2), -torch.ones(2), torch.ones(2))
    dyn.check_compatible_with(policy)
    dyn.set_normalizer_stats(-torch.ones(2), 2 * torch.ones(2), -torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="normalise actions differently"):
        dyn.check_compatible_with(policy)
    short = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, pool=2, model_dim=32,
                                                         n_heads=4, n_layers=1, proprio_dim=2, action_dim=2, horizon=8))
    with pytest.raises(ValueError, match="T=8"):
        short.check_compatible_with(policy)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_inference_encoder_equals_the_transformer_module_and_its_gradient(preset):
    cfg = getattr(LatentDynamicsConfig, preset)(embed_tokens=64, embed_dim=48, pool=2 if preset == "cpu" else 1,
                                                proprio_dim=5, action_dim=3, horizon=8)
    torch.manual_seed(0)
    model = LatentDynamicsModel(cfg).eval()
    x = torch.randn(3, cfg.in_tokens, cfg.model_dim, requires_grad=True)
    fast = model._encode_inference(x)
    reference = model.encoder(x)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    (g_ref,) = torch.autograd.grad(model.encoder(x).square().sum(), x)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)
