"""Guided DDIM sampler: Eq. 3 by hand, s = 0 bit for bit, steering direction, M repeats, batching,
no autograd graph surviving a step."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.guidance import (
    DynaGuideObjective,
    GuidanceConfig,
    GoalLatents,
    guided_ddim_sample,
    latent_guidance_metric,
)

T, A = 8, 3


class TinyPolicy(nn.Module):
    """A real (tiny) epsilon-prediction network: MLP over the flattened chunk, timestep and cond."""

    def __init__(self, horizon: int = T, action_dim: int = A, cond_dim: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.horizon, self.action_dim = horizon, action_dim
        self.net = nn.Sequential(nn.Linear(horizon * action_dim + 1 + cond_dim, 32), nn.Mish(),
                                 nn.Linear(32, horizon * action_dim))
        self.calls = 0
        self.saw_grad_mode: list[bool] = []

    def encode_observation(self, obs):
        return obs["state"]

    def predict_noise(self, noisy_actions, timesteps, cond):
        self.calls += 1
        self.saw_grad_mode.append(torch.is_grad_enabled() or noisy_actions.requires_grad)
        x = torch.cat([noisy_actions.flatten(1), timesteps[:, None].to(noisy_actions) / 100.0, cond], dim=1)
        return 0.3 * self.net(x).view(-1, self.horizon, self.action_dim)


class ZeroNoisePolicy(nn.Module):
    """Predicts ε = 0 everywhere (so DDIM steps are pure rescale + clip)."""

    def __init__(self, horizon: int = T, action_dim: int = A):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def encode_observation(self, obs):
        return None

    def predict_noise(self, noisy_actions, timesteps, cond):
        self.calls += 1
        return torch.zeros_like(noisy_actions)


class GaussianDataPolicy(nn.Module):
    """Exact ε-prediction for data a ~ N(0, std²·I): E[ε | aᵏ] = √(1−ᾱ_k)·aᵏ / (ᾱ_k·std² + 1 − ᾱ_k).

    Unguided DDIM therefore samples (approximately) that Gaussian, a known base distribution to steer.
    """

    def __init__(self, std: float = 0.3, horizon: int = T, action_dim: int = A):
        super().__init__()
        self.horizon, self.action_dim, self.var = horizon, action_dim, std**2
        self.register_buffer("alphas_cumprod", make_ddim_scheduler().alphas_cumprod.clone())

    def encode_observation(self, obs):
        return None

    def predict_noise(self, noisy_actions, timesteps, cond):
        ab = self.alphas_cumprod[timesteps].to(noisy_actions).view(-1, 1, 1)
        return (1 - ab).sqrt() * noisy_actions / (ab * self.var + 1 - ab)


class MeanActionDynamics(nn.Module):
    """Synthetic differentiable "dynamics": the outcome latent is the chunk's mean action, (B, 1, A)."""

    def forward(self, tokens, proprio, actions):
        return actions.mean(dim=1, keepdim=True)


def mean_objective(positives=None, negatives=None, sigma=1.0):
    gset = GoalLatents.from_latents(positives, negatives, GuidanceConfig(sigma=sigma))
    return DynaGuideObjective(MeanActionDynamics(), torch.zeros(1, 1, 1), torch.zeros(1, 1), gset)


def plain_ddim(policy, cond, noise, ddim=None):
    """Reference unguided DDIM loop written directly against diffusers."""
    scheduler = make_ddim_scheduler(ddim)
    x = noise
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps = policy.predict_noise(x, torch.full((x.shape[0],), int(t), dtype=torch.long), cond)
        x = scheduler.step(eps, int(t), x).prev_sample
    return x


def independent_alpha_bar(t: int, train_steps: int = 100) -> float:
    """ᾱ_t of the squaredcos_cap_v2 schedule, computed from the cosine formula in float64."""
    f = lambda s: math.cos((s / train_steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    prod = 1.0
    for i in range(t + 1):
        prod *= 1 - min(1 - f(i + 1) / f(i), 0.999)
    return prod


def make_inputs(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=g), torch.randn(batch, T, A, generator=g)


def test_scale_zero_reproduces_unguided_ddim_bit_for_bit():
    policy = TinyPolicy()
    cond, noise = make_inputs()
    reference = plain_ddim(policy, cond, noise)
    objective = mean_objective(torch.full((1, 1, A), 0.5))
    for obj in (None, objective):
        out = guided_ddim_sample(policy, cond, obj, scale=0.0, initial_noise=noise)
        assert torch.equal(out.actions, reference)
        assert out.timings.guidance_calls == 0
    guided = guided_ddim_sample(policy, cond, objective, scale=1.0, initial_noise=noise)
    assert not torch.equal(guided.actions, reference)
    assert guided.objective.shape == (4,)


def test_eq3_update_matches_hand_computation():
    """Zero-noise policy + linear objective d(a) = Σ w·a (∇d = w): check ε̃ and the DDIM step by hand."""
    ddim = DDIMConfig(num_inference_steps=2)  # timesteps 50, 0
    w = torch.linspace(-0.2, 0.3, T * A).view(1, T, A)
    objective = lambda a: (a * w).flatten(1).sum(1)  # noqa: E731
    noise = 0.3 * torch.randn(2, T, A, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = 0.8
    out = guided_ddim_sample(ZeroNoisePolicy().double(), None, objective, scale=s, ddim=ddim, initial_noise=noise)
    x = noise.clone()
    w64 = w.double()
    for t, t_prev in ((50, 0), (0, None)):
        ab = independent_alpha_bar(t)
        ab_prev = independent_alpha_bar(t_prev) if t_prev is not None else 1.0
        eps = -s * math.sqrt(1 - ab) * w64
        x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    torch.testing.assert_close(out.actions, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["pos", "neg", "both"])
def test_guidance_steers_monotonically_with_scale(which):
    """Exact denoiser for N(0, 0.3²) data + ẑ = mean action: the mean moves towards z⁺ = 0.5·1 and away
    from z⁻ = −0.5·1, strictly more at every step of the scale grid (paper schedule, clip_sample on)."""
    policy = GaussianDataPolicy(std=0.3)
    noise = torch.randn(64, T, A, generator=torch.Generator().manual_seed(5))
    pos = torch.full((1, 1, A), 0.5) if which in ("pos", "both") else None
    neg = torch.full((1, 1, A), -0.5) if which in ("neg", "both") else None
    objective = mean_objective(pos, neg, sigma=1.0)
    to_pos, to_neg = [], []
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        z = guided_ddim_sample(policy, None, objective, scale=s, initial_noise=noise).actions.mean(dim=1)
        to_pos.append((z - 0.5).norm(dim=-1).mean().item())
        to_neg.append((z + 0.5).norm(dim=-1).mean().item())
    assert all(b < a for a, b in zip(to_pos, to_pos[1:])), to_pos
    assert all(b > a for a, b in zip(to_neg, to_neg[1:])), to_neg
    assert to_pos[0] - to_pos[-1] > 0.15 and to_neg[-1] - to_neg[0] > 0.15, (to_pos, to_neg)


@pytest.mark.parametrize("mode", ["repeat", "renoise"])
@pytest.mark.parametrize("m", [1, 3])
def test_policy_and_gradient_calls_are_steps_times_m(mode, m):
    policy = TinyPolicy()
    cond, noise = make_inputs()
    ddim = DDIMConfig(num_inference_steps=5)
    out = guided_ddim_sample(policy, cond, mean_objective(torch.zeros(1, 1, A)), scale=1.0, ddim=ddim,
                             stochastic_steps=m, stochastic_mode=mode, initial_noise=noise,
                             generator=torch.Generator().manual_seed(0))
    assert policy.calls == 5 * m
    assert out.timings.policy_calls == 5 * m and out.timings.guidance_calls == 5 * m


def test_repeat_mode_applies_the_same_step_m_times():
    ddim = DDIMConfig(num_inference_steps=2)
    noise = 0.5 * torch.randn(3, T, A, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = guided_ddim_sample(ZeroNoisePolicy().double(), None, None, scale=0.0, ddim=ddim,
                             stochastic_steps=2, stochastic_mode="repeat", initial_noise=noise)
    x = noise.clone()
    for t, t_prev in ((50, 0), (0, None)):
        ab = independent_alpha_bar(t)
        ab_prev = independent_alpha_bar(t_prev) if t_prev is not None else 1.0
        for _ in range(2):
            x = math.sqrt(ab_prev) * (x / math.sqrt(ab)).clamp(-1, 1)
    torch.testing.assert_close(out.actions, x, rtol=1e-5, atol=1e-6)


def test_renoise_mode_matches_hand_computation():
    """ε = 0 policy: step = √ᾱ_prev·clip(x/√ᾱ_t); between repeats x = √(ᾱ_t/ᾱ_prev)·y + √(1−ᾱ_t/ᾱ_prev)·n."""
    ddim = DDIMConfig(num_inference_steps=2)
    noise = 0.5 * torch.randn(3, T, A, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = guided_ddim_sample(ZeroNoisePolicy().double(), None, None, scale=0.0, ddim=ddim, stochastic_steps=2,
                             stochastic_mode="renoise", initial_noise=noise, generator=torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)
    x = noise.clone()
    for t, t_prev in ((50, 0), (0, None)):
        ab = independent_alpha_bar(t)
        ab_prev = independent_alpha_bar(t_prev) if t_prev is not None else 1.0
        y = math.sqrt(ab_prev) * (x / math.sqrt(ab)).clamp(-1, 1)
        n = torch.randn(x.shape, generator=replay, dtype=torch.float64)
        x = math.sqrt(ab / ab_prev) * y + math.sqrt(1 - ab / ab_prev) * n
        x = math.sqrt(ab_prev) * (x / math.sqrt(ab)).clamp(-1, 1)
    torch.testing.assert_close(out.actions, x, rtol=1e-5, atol=1e-6)
    repeat = guided_ddim_sample(ZeroNoisePolicy().double(), None, None, scale=0.0, ddim=ddim, stochastic_steps=2,
                                stochastic_mode="repeat", initial_noise=noise)
    assert not torch.allclose(repeat.actions, out.actions)


@pytest.mark.parametrize("mode", ["repeat", "renoise"])
def test_batch_of_b_equals_b_runs_of_batch_one(mode):
    policy = TinyPolicy().double()
    cond, noise = make_inputs(batch=5, seed=7)
    cond, noise = cond.double(), noise.double()
    objective = mean_objective(torch.full((2, 1, A), 0.4, dtype=torch.float64),
                               torch.full((1, 1, A), -0.4, dtype=torch.float64))
    kwargs = dict(scale=1.5, stochastic_steps=2, stochastic_mode=mode)
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    batched = guided_ddim_sample(policy, cond, objective, initial_noise=noise, generator=gens(range(5)), **kwargs)
    singles = [
        guided_ddim_sample(policy, cond[b : b + 1], objective, initial_noise=noise[b : b + 1], generator=gens([b]),
                           **kwargs)
        for b in range(5)
    ]
    torch.testing.assert_close(batched.actions, torch.cat([s.actions for s in singles]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched.objective, torch.cat([s.objective for s in singles]), rtol=1e-10, atol=1e-12)


class _Packed:
    """Stand-in for a tensor saved for backward; alive exactly as long as the graph node holding it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def count_live_saved_tensors(run):
    """Run ``run()`` recording every tensor autograd saves; return (result, saved, still alive after gc)."""
    refs: list[weakref.ref] = []

    def pack(tensor):
        packed = _Packed(tensor)
        refs.append(weakref.ref(packed))
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda packed: packed.tensor):
        result = run()
    gc.collect()
    return result, len(refs), sum(ref() is not None for ref in refs)


def naive_graph_keeping_loop(policy, cond, objective, noise, steps):
    """Control: the official code's structure (chunk requires grad, graph kept across steps)."""
    scheduler = make_ddim_scheduler(DDIMConfig(num_inference_steps=steps))
    x = noise.clone().requires_grad_(True)
    for t in scheduler.timesteps:
        eps = policy.predict_noise(x, torch.full((x.shape[0],), int(t), dtype=torch.long), cond)
        grad = torch.autograd.grad(objective(x).sum(), x)[0]
        x = scheduler.step(eps - grad, int(t), x).prev_sample
    return x


def test_no_autograd_graph_survives_a_step():
    policy = TinyPolicy()
    cond, noise = make_inputs()
    objective = mean_objective(torch.full((1, 1, A), 0.5))
    for steps in (2, 10):
        out, saved, alive = count_live_saved_tensors(lambda: guided_ddim_sample(
            policy, cond, objective, scale=1.0, stochastic_steps=2, initial_noise=noise,
            ddim=DDIMConfig(num_inference_steps=steps)))  # noqa: B023 - called at once
        assert saved > 0, "the objective gradient should have saved tensors while it ran"
        assert alive == 0, f"{alive} tensors saved for backward are still held after {steps} steps"
        for tensor in (out.actions, out.objective):
            assert not tensor.requires_grad and tensor.grad_fn is None
    assert not any(policy.saw_grad_mode), "policy ran with autograd enabled or on a grad-requiring input"
    assert all(p.grad is None for p in policy.parameters())
    # the check is discriminative: the naive loop keeps a graph that grows with the number of steps
    kept = [count_live_saved_tensors(lambda: naive_graph_keeping_loop(policy, cond, objective, noise, n))[2]  # noqa: B023
            for n in (2, 10)]
    assert 0 < kept[0] < kept[1], kept


def test_random_initial_noise_from_generator_is_reproducible():
    policy = TinyPolicy()
    cond, _ = make_inputs()
    a = guided_ddim_sample(policy, cond, None, scale=0.0, generator=torch.Generator().manual_seed(11)).actions
    b = guided_ddim_sample(policy, cond, None, scale=0.0, generator=torch.Generator().manual_seed(11)).actions
    assert a.shape == (4, T, A) and torch.equal(a, b)


def test_bad_arguments_raise_clear_errors():
    policy = TinyPolicy()
    cond, noise = make_inputs()
    obj = mean_objective(torch.zeros(1, 1, A))
    with pytest.raises(ValueError, match="stochastic_steps"):
        guided_ddim_sample(policy, cond, obj, scale=1.0, stochastic_steps=0, initial_noise=noise)
    with pytest.raises(ValueError, match="stochastic_mode"):
        guided_ddim_sample(policy, cond, obj, scale=1.0, stochastic_mode="bogus", initial_noise=noise)
    with pytest.raises(ValueError, match="scale"):
        guided_ddim_sample(policy, cond, obj, scale=float("nan"), initial_noise=noise)
    with pytest.raises(ValueError, match="initial_noise"):
        guided_ddim_sample(policy, cond, obj, scale=1.0, initial_noise=noise[:, :3])
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        guided_ddim_sample(policy, cond, lambda a: a.sum(), scale=1.0, initial_noise=noise)
    with pytest.raises(ValueError, match="not finite"):
        guided_ddim_sample(policy, cond, lambda a: a.sum((1, 2)) * float("nan"), scale=1.0, initial_noise=noise)
    with pytest.raises(ValueError, match="batch size"):
        guided_ddim_sample(ZeroNoisePolicy(), None, None, scale=0.0)


def test_metric_of_mean_action_dynamics_is_eq2():
    obj = mean_objective(torch.full((1, 1, A), 0.5), None, sigma=2.0)
    actions = torch.randn(2, T, A)
    expected = latent_guidance_metric(actions.mean(1, keepdim=True), torch.full((1, 1, A), 0.5), None, 2.0)
    torch.testing.assert_close(obj(actions), expected)


@pytest.mark.parametrize("mode", ["repeat", "renoise"])
def test_policy_on_a_second_thread_gives_the_same_chunk_bit_for_bit(mode):
    from concurrent.futures import ThreadPoolExecutor

    cond, noise = make_inputs()
    kwargs = dict(scale=2.0, ddim=DDIMConfig(num_inference_steps=5), stochastic_steps=3, stochastic_mode=mode,
                  initial_noise=noise)
    sequential = guided_ddim_sample(TinyPolicy(), cond, mean_objective(torch.ones(1, 1, A)),
                                    generator=torch.Generator().manual_seed(0), **kwargs)
    policy = TinyPolicy()
    with ThreadPoolExecutor(1) as executor:
        parallel = guided_ddim_sample(policy, cond, mean_objective(torch.ones(1, 1, A)), policy_executor=executor,
                                      generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(parallel.actions, sequential.actions)
    assert not any(policy.saw_grad_mode), "the policy thread must run without autograd"
    assert parallel.timings.policy_calls == sequential.timings.policy_calls == 15


@pytest.mark.parametrize("k", [1, 3])
def test_guided_steps_guides_and_repeats_only_the_last_k_steps(k):
    policy = TinyPolicy()
    cond, noise = make_inputs()
    out = guided_ddim_sample(policy, cond, mean_objective(torch.ones(1, 1, A)), scale=2.0,
                             ddim=DDIMConfig(num_inference_steps=5), stochastic_steps=2, initial_noise=noise,
                             guided_steps=k, generator=torch.Generator().manual_seed(0))
    assert out.timings.guidance_calls == 2 * k
    assert out.timings.policy_calls == (5 - k) + 2 * k
    full = guided_ddim_sample(TinyPolicy(), cond, mean_objective(torch.ones(1, 1, A)), scale=2.0,
                              ddim=DDIMConfig(num_inference_steps=5), stochastic_steps=2, initial_noise=noise,
                              generator=torch.Generator().manual_seed(0))
    every = guided_ddim_sample(TinyPolicy(), cond, mean_objective(torch.ones(1, 1, A)), scale=2.0,
                               ddim=DDIMConfig(num_inference_steps=5), stochastic_steps=2, initial_noise=noise,
                               guided_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(every.actions, full.actions)
    assert not torch.equal(out.actions, full.actions)


def test_guided_steps_must_be_positive():
    cond, noise = make_inputs()
    with pytest.raises(ValueError, match="guided_steps"):
        guided_ddim_sample(TinyPolicy(), cond, mean_objective(torch.ones(1, 1, A)), scale=1.0, initial_noise=noise,
                           guided_steps=0)


def test_denoised_guidance_input_scores_the_policys_clean_estimate():
    """With a policy that predicts ε = 0, â⁰ = aᵏ/√ᾱ_k: the objective must see that (clipped) chunk."""
    seen = []

    class Recording:
        def __call__(self, actions):
            seen.append(actions.detach().clone())
            return -(actions - 0.5).square().flatten(1).sum(1)

    noise = 0.5 * torch.randn(2, T, A, generator=torch.Generator().manual_seed(1))
    ddim = DDIMConfig(num_inference_steps=2)
    guided_ddim_sample(ZeroNoisePolicy(), None, Recording(), scale=1.0, ddim=ddim, initial_noise=noise,
                       guidance_input="denoised")
    ab = make_ddim_scheduler(ddim).alphas_cumprod[50]
    torch.testing.assert_close(seen[0], (noise / ab.sqrt()).clamp(-1, 1))
    with pytest.raises(ValueError, match="guidance_input"):
        guided_ddim_sample(ZeroNoisePolicy(), None, Recording(), scale=1.0, initial_noise=noise, guidance_input="x")
