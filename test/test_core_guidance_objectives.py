"""Goal sets, objectives (with Core-Models' real dynamics/classifier/embedder) and the baselines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynaguide.baselines import (
    goal_conditioned_sample,
    position_guidance_sample,
    repeat_condition,
    sampling_baseline,
)
from dynaguide.config import from_dict
from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.guidance import (
    ClassifierObjective,
    DynaGuideObjective,
    FinalFrames,
    GuidanceConfig,
    GoalLatents,
    PositionGuidanceObjective,
    chunk_for_dynamics,
    guided_ddim_sample,
    latent_guidance_metric,
    objective_value_and_grad,
)

T, A = 8, 3
FAST = DDIMConfig(num_inference_steps=4)


class GaussianDataPolicy(nn.Module):
    """Exact ε-prediction for data a ~ N(mean, std²·I), optionally shifted per sample by ``cond (B, A)``."""

    def __init__(self, std: float = 0.3, horizon: int = T, action_dim: int = A):
        super().__init__()
        self.horizon, self.action_dim, self.var = horizon, action_dim, std**2
        self.register_buffer("alphas_cumprod", make_ddim_scheduler().alphas_cumprod.clone())

    def encode_observation(self, obs):
        return obs

    def predict_noise(self, noisy_actions, timesteps, cond):
        ab = self.alphas_cumprod[timesteps].to(noisy_actions).view(-1, 1, 1)
        mean = torch.zeros_like(noisy_actions) if cond is None else cond[:, None, :].to(noisy_actions)
        centred = noisy_actions - ab.sqrt() * mean
        return (1 - ab).sqrt() * centred / (ab * self.var + 1 - ab)


class MeanActionDynamics(nn.Module):
    def forward(self, tokens, proprio, actions):
        return actions.mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def small_dynamics():
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel

    torch.manual_seed(0)
    cfg = LatentDynamicsConfig(embed_tokens=16, embed_dim=24, pool=2, model_dim=16, n_layers=1, n_heads=2,
                               ff_mult=2, proprio_dim=2, action_dim=A, horizon=T)
    model = LatentDynamicsModel(cfg).eval()
    model.set_normalizer_stats(-torch.ones(A), torch.ones(A), -torch.ones(2), torch.ones(2))
    return model


@pytest.fixture(scope="module")
def embedder():
    from dynaguide.embedders.random_patch import RandomPatchEmbedder

    return RandomPatchEmbedder(image_size=28, patch_size=7, dim=24, seed=0)  # 16 tokens x 24


# ----------------------------------------------------------------------------- chunking
def test_chunk_for_dynamics_offsets_and_pads_with_last_action():
    actions = torch.arange(5.0).view(1, 5, 1)
    assert chunk_for_dynamics(actions, 0, 5).flatten().tolist() == [0, 1, 2, 3, 4]
    assert chunk_for_dynamics(actions, 1, 5).flatten().tolist() == [1, 2, 3, 4, 4]
    assert chunk_for_dynamics(actions, 3, 4).flatten().tolist() == [3, 4, 4, 4]
    with pytest.raises(ValueError, match="offset"):
        chunk_for_dynamics(actions, 5, 5)


# ----------------------------------------------------------------------------- goal sets
def test_guidance_set_from_images_embeds_and_maps_to_outcome_space(small_dynamics, embedder):
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.rand(3, 3, 28, 28, generator=g), torch.rand(2, 3, 28, 28, generator=g)
    gset = GoalLatents.from_images(embedder, small_dynamics, pos, neg, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(gset.positives, small_dynamics.outcome_latent(embedder(pos)))
        torch.testing.assert_close(gset.negatives, small_dynamics.outcome_latent(embedder(neg)))
    assert gset.latent_shape == (4, 24) and (gset.num_positives, gset.num_negatives) == (3, 2)
    uint8 = GoalLatents.from_images(embedder, small_dynamics, (pos * 255).round().to(torch.uint8), None)
    assert uint8.negatives is None and uint8.positives.shape == (3, 4, 24)
    assert not gset.positives.requires_grad


def test_guidance_set_from_final_frames_through_dynamics(small_dynamics, embedder):
    g = torch.Generator().manual_seed(2)
    frames = FinalFrames(torch.rand(3, 3, 28, 28, generator=g), torch.randn(3, 2, generator=g),
                         torch.rand(3, A, generator=g) * 2 - 1)
    gset = GoalLatents.from_final_frames_through_dynamics(embedder, small_dynamics, frames, None, horizon=T)
    with torch.no_grad():
        for k in range(3):
            repeated = frames.last_actions[k].expand(1, T, A)
            expected = small_dynamics(embedder(frames.images[k : k + 1]), frames.proprio[k : k + 1], repeated)
            torch.testing.assert_close(gset.positives[k : k + 1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last_actions"):
        GoalLatents.from_final_frames_through_dynamics(
            embedder, small_dynamics, FinalFrames(frames.images, frames.proprio, frames.last_actions[:2]), horizon=T)


def test_guidance_set_validation_errors(embedder, small_dynamics):
    good = torch.zeros(2, 4, 5)
    with pytest.raises(ValueError, match="neither"):
        GoalLatents.from_latents(None, None)
    with pytest.raises(ValueError, match="NaN"):
        GoalLatents.from_latents(torch.full((2, 4, 5), float("nan")))
    with pytest.raises(ValueError, match="same outcome space"):
        GoalLatents.from_latents(good, torch.zeros(1, 4, 6))
    with pytest.raises(ValueError, match="empty"):
        GoalLatents.from_latents(good[:0])
    with pytest.raises(ValueError, match=r"\(K, N, D\)"):
        GoalLatents.from_latents(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GoalLatents.from_images(embedder, small_dynamics, torch.full((1, 3, 28, 28), 2.0))
    with pytest.raises(ValueError, match="sigma"):
        GuidanceConfig(sigma=0.0)
    with pytest.raises(ValueError, match="stochastic_mode"):
        GuidanceConfig(stochastic_mode="sometimes")


def test_guidance_config_loads_from_yaml_mapping():
    cfg = from_dict(GuidanceConfig, {"sigma": 2, "scale": 0.5, "stochastic_steps": 2, "stochastic_mode": "renoise"})
    assert cfg == GuidanceConfig(sigma=2.0, scale=0.5, stochastic_steps=2, stochastic_mode="renoise")


# ----------------------------------------------------------------------------- objectives
def test_dynaguide_objective_is_eq2_on_the_real_dynamics_and_per_sample(small_dynamics, embedder):
    g = torch.Generator().manual_seed(3)
    gset = GoalLatents.from_images(embedder, small_dynamics, torch.rand(4, 3, 28, 28, generator=g),
                                   torch.rand(2, 3, 28, 28, generator=g), GuidanceConfig(sigma=3.0))
    tokens = embedder(torch.rand(1, 3, 28, 28, generator=g))
    proprio = torch.randn(1, 2, generator=g)
    objective = DynaGuideObjective(small_dynamics, tokens, proprio, gset)
    actions = torch.rand(5, T, A, generator=g) * 2 - 1
    with torch.no_grad():
        pred = small_dynamics(tokens.expand(5, -1, -1), proprio.expand(5, -1), actions)
        expected = latent_guidance_metric(pred, gset.positives, gset.negatives, 3.0)
        torch.testing.assert_close(objective(actions), expected)
    values, grad = objective_value_and_grad(objective, actions)
    for b in range(5):
        v_b, g_b = objective_value_and_grad(objective, actions[b : b + 1])
        torch.testing.assert_close(g_b, grad[b : b + 1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v_b, values[b : b + 1], rtol=1e-5, atol=1e-6)
    assert grad.abs().sum() > 0


def test_dynaguide_objective_encodes_the_observation_once_per_chunk(small_dynamics, embedder):
    """The action-independent context (pooled tokens, proprio token) is built once, not per guided step,
    and the split model gives the same prediction and gradient as the full forward."""
    calls = []
    handle = small_dynamics.token_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        tokens, proprio = embedder(torch.rand(1, 3, 28, 28)), torch.randn(1, 2)
        objective = DynaGuideObjective(small_dynamics, tokens, proprio, GoalLatents.from_latents(torch.randn(2, 4, 24)))
        assert len(calls) == 1
        actions = torch.rand(3, T, A) * 2 - 1
        for _ in range(4):
            _, grad = objective_value_and_grad(objective, actions)
        assert len(calls) == 1
        full = lambda a: latent_guidance_metric(  # noqa: E731
            small_dynamics(tokens.expand(3, -1, -1), proprio.expand(3, -1), a),
            objective.guidance_set.positives, objective.guidance_set.negatives, objective.guidance_set.config.sigma)
        _, grad_full = objective_value_and_grad(full, actions)
        torch.testing.assert_close(grad, grad_full, rtol=1e-5, atol=1e-7)
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="proprio batch"):
        small_dynamics.encode_context(embedder(torch.rand(2, 3, 28, 28)), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="context must be"):
        small_dynamics.predict_from_context(torch.zeros(1, 3, 16), torch.zeros(1, T, A))


def test_dynaguide_objective_from_observation_embeds_once(small_dynamics, embedder):
    image, proprio = torch.rand(2, 3, 28, 28), torch.randn(2, 2)
    gset = GoalLatents.from_latents(torch.randn(3, 4, 24))
    objective = DynaGuideObjective.from_observation(small_dynamics, embedder, image, proprio, gset)
    torch.testing.assert_close(objective.obs_tokens, embedder(image))
    assert not objective.obs_tokens.requires_grad
    with pytest.raises(ValueError, match="image"):
        DynaGuideObjective.from_observation(small_dynamics, embedder, image[0], proprio, gset)


def test_dynaguide_objective_offset_feeds_chunk_from_current_step(small_dynamics, embedder):
    tokens = embedder(torch.rand(1, 3, 28, 28))
    gset = GoalLatents.from_latents(torch.zeros(1, 4, 24))
    objective = DynaGuideObjective(small_dynamics, tokens, torch.zeros(1, 2), gset, action_offset=1)
    actions = torch.rand(2, T, A)
    shifted = torch.cat([actions[:, 1:], actions[:, -1:]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(objective.predict_outcome(actions),
                                   small_dynamics(tokens.expand(2, -1, -1), torch.zeros(2, 2), shifted))


def test_classifier_objective_weighted_log_probabilities():
    from dynaguide_experiments.blocktouch.classifier import OutcomeClassifier, OutcomeClassifierConfig

    torch.manual_seed(0)
    clf = OutcomeClassifier(OutcomeClassifierConfig(num_classes=4, image_size=32, hidden_dim=16, horizon=T,
                                                    action_dim=A, proprio_dim=2)).eval()
    clf.set_normalizer_stats(-torch.ones(A), torch.ones(A), -torch.ones(2), torch.ones(2))
    image, proprio = torch.rand(1, 3, 32, 32), torch.zeros(1, 2)
    weights = [1.0, -0.33, -0.33, -0.33]
    objective = ClassifierObjective(clf, image, proprio, weights)
    actions = torch.rand(3, T, A)
    with torch.no_grad():
        logp = torch.log_softmax(clf(image.expand(3, -1, -1, -1), proprio.expand(3, -1), actions), dim=-1)
    torch.testing.assert_close(objective(actions), logp @ torch.tensor(weights), rtol=1e-5, atol=1e-6)
    _, grad = objective_value_and_grad(objective, actions)
    assert grad.shape == actions.shape and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="class_weights"):
        ClassifierObjective(clf, image, proprio, [0.0, 0.0])


def test_position_objective_known_path_and_distance():
    deltas = torch.tensor([0.1, 0.0, 0.0]).expand(1, 4, 3)
    objective = PositionGuidanceObjective(target=[1.0, 0.0, 0.0], start_position=[0.0, 0.0, 0.0])
    torch.testing.assert_close(objective.path(deltas)[0, :, 0], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert objective(deltas).item() == pytest.approx(-(0.9 + 0.8 + 0.7 + 0.6) / 4)
    final = PositionGuidanceObjective([1.0, 0.0, 0.0], [0.0, 0.0, 0.0], reduction="final")
    assert final(deltas).item() == pytest.approx(-0.6)
    scaled = PositionGuidanceObjective([1.0, 0.0, 0.0], [0.5, 0.0, 0.0], unnormalize=lambda a: 2 * a, reduction="min")
    assert scaled(deltas).item() == pytest.approx(-0.1, abs=1e-6)  # path x = 0.7, 0.9, 1.1, 1.3
    absolute = PositionGuidanceObjective([1.0, 0.0, 0.0], [9.0, 9.0, 9.0], actions_are_deltas=False, reduction="final")
    assert absolute(deltas).item() == pytest.approx(-0.9)


def test_position_guidance_pulls_the_path_towards_the_target():
    policy = GaussianDataPolicy(std=0.1)
    noise = torch.randn(16, T, A, generator=torch.Generator().manual_seed(0))
    target = [0.8, -0.8, 0.0]
    kwargs = dict(target=target, start_position=[0.0, 0.0, 0.0], ddim=FAST, initial_noise=noise, reduction="final")
    end = lambda s: position_guidance_sample(policy, None, scale=s, **kwargs).actions.sum(1)  # noqa: E731
    dist = [(end(s) - torch.tensor(target)).norm(dim=-1).mean().item() for s in (0.0, 0.05, 0.1, 0.2)]
    assert all(b < a for a, b in zip(dist, dist[1:])), dist
    assert dist[0] - dist[-1] > 0.2, dist


# ----------------------------------------------------------------------------- baselines
def test_repeat_condition_nested():
    cond = {"a": torch.tensor([[1.0], [2.0]]), "b": (torch.tensor([3, 4]), None), "c": 5}
    out = repeat_condition(cond, 2)
    assert out["a"].flatten().tolist() == [1, 1, 2, 2] and out["b"][0].tolist() == [3, 3, 4, 4]
    assert out["b"][1] is None and out["c"] == 5


def test_sampling_baseline_picks_best_candidate_by_full_metric_with_negatives():
    policy = GaussianDataPolicy(std=0.5)
    cond = torch.tensor([[0.2, 0.0, -0.2], [-0.3, 0.1, 0.0]])  # per-observation data mean
    noise = torch.randn(2, 6, T, A, generator=torch.Generator().manual_seed(1))
    pos, neg = torch.full((1, 1, A), 0.4), torch.full((2, 1, A), -0.4)
    objective = DynaGuideObjective(MeanActionDynamics(), torch.zeros(1, 1, 1), torch.zeros(1, 1),
                                   GoalLatents.from_latents(pos, neg, GuidanceConfig(sigma=0.2)))
    result = sampling_baseline(policy, cond, objective, num_samples=6, ddim=FAST, initial_noise=noise)
    assert result.candidates.shape == (2, 6, T, A) and result.scores.shape == (2, 6)
    for b in range(2):
        for n in range(6):
            single = guided_ddim_sample(policy, cond[b : b + 1], None, scale=0.0, ddim=FAST,
                                        initial_noise=noise[b, n : n + 1]).actions
            torch.testing.assert_close(result.candidates[b, n : n + 1], single, rtol=1e-6, atol=1e-6)
            z = single.mean(dim=1, keepdim=True)
            hand = (math.log(math.exp(-(z - pos[0]).norm().item() / 0.2))
                    - math.log(sum(math.exp(-(z - neg[j]).norm().item() / 0.2) for j in range(2))))
            assert result.scores[b, n].item() == pytest.approx(hand, rel=1e-4, abs=1e-4)
    assert torch.equal(result.best_index, result.scores.argmax(dim=1))
    torch.testing.assert_close(result.actions, result.candidates[torch.arange(2), result.best_index])
    # the negative term matters: ranking by positives only picks differently on this seed or scores differ
    pos_only = DynaGuideObjective(MeanActionDynamics(), torch.zeros(1, 1, 1), torch.zeros(1, 1),
                                  GoalLatents.from_latents(pos, None, GuidanceConfig(sigma=0.2)))
    pos_scores = sampling_baseline(policy, cond, pos_only, num_samples=6, ddim=FAST, initial_noise=noise).scores
    assert not torch.allclose(pos_scores, result.scores)
    with pytest.raises(ValueError, match="num_samples"):
        sampling_baseline(policy, cond, objective, num_samples=0, ddim=FAST)


def test_goal_conditioned_sample_uses_goal_image():
    from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig.cpu(goal_conditioned=True, image_size=32, proprio_dim=2, action_dim=A, horizon=T,
                                    down_dims=(16, 32), num_keypoints=4, cnn_width=8, step_embed_dim=16)
    policy = DiffusionPolicy(cfg).eval()
    policy.set_normalizer_stats(-torch.ones(A), torch.ones(A), -torch.ones(2), torch.ones(2))
    obs = {"rgb": torch.rand(2, 2, 3, 32, 32), "proprio": torch.zeros(2, 2, 2)}
    goal = torch.rand(2, 3, 32, 32)
    noise = torch.randn(2, T, A)
    two = DDIMConfig(num_inference_steps=2)
    out = goal_conditioned_sample(policy, obs, goal, ddim=two, initial_noise=noise)
    with torch.no_grad():
        cond = policy.encode_observation({**obs, "goal_image": goal})
    reference = guided_ddim_sample(policy, cond, None, scale=0.0, ddim=two, initial_noise=noise).actions
    assert torch.equal(out.actions, reference)
    other = goal_conditioned_sample(policy, obs, torch.rand(2, 3, 32, 32), ddim=two, initial_noise=noise)
    assert not torch.equal(other.actions, out.actions)
    plain = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_size=32, proprio_dim=2, action_dim=A, horizon=T,
                                                      down_dims=(16, 32), num_keypoints=4, cnn_width=8))
    with pytest.raises(ValueError, match="goal_conditioned=True"):
        goal_conditioned_sample(plain, obs, goal, ddim=FAST)


def test_guidance_config_sampler_kwargs_drive_the_one_sampling_loop():
    policy = GaussianDataPolicy()
    noise = torch.randn(3, T, A, generator=torch.Generator().manual_seed(4))
    cfg = GuidanceConfig(sigma=1.0, scale=0.7, stochastic_steps=2, stochastic_mode="repeat", guided_steps=3)
    gset = GoalLatents.from_latents(torch.full((1, 1, A), 0.5), None, cfg)
    objective = DynaGuideObjective(MeanActionDynamics(), torch.zeros(1, 1, 1), torch.zeros(1, 1), gset)
    out = guided_ddim_sample(policy, None, objective, ddim=FAST, initial_noise=noise, **cfg.sampler_kwargs())
    ref = guided_ddim_sample(policy, None, objective, scale=0.7, stochastic_steps=2, stochastic_mode="repeat",
                             guided_steps=3, ddim=FAST, initial_noise=noise)
    assert torch.equal(out.actions, ref.actions)
    assert out.timings.guidance_calls == 2 * 3 and out.timings.policy_calls == 1 + 2 * 3  # FAST: 4 DDIM steps
    assert GuidanceConfig().sampler_kwargs()["guided_steps"] is None  # 0 = guide every step
