"""Real-time chunking in the guided DDIM sampler (dynaguide.guidance.rtc), on a tiny real DiffusionPolicy:
the frozen prefix is honoured (hard: exactly, soft: within 1e-4), no prefix (or an all-zero mask) leaves the
sample bit for bit unchanged, guidance and RTC together stay finite and still steer, the weight schedule's shape."""

from __future__ import annotations

import math

import pytest
import torch

from dynaguide.guidance import RTCConfig, guided_ddim_sample, prefix_weights, shift_prefix
from dynaguide.guidance.rtc import delay_steps
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from test_core_guidance_sampler import GaussianDataPolicy

T, A, B = 16, 3, 4


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig.cpu(image_keys=("rgb",), image_size=32, proprio_dim=2, action_dim=A, horizon=T,
                                    n_action_steps=8)
    p = DiffusionPolicy(cfg)
    p.set_normalizer_stats(-torch.ones(A), torch.ones(A), -torch.ones(2), torch.ones(2))
    return p.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def cond(policy):
    g = torch.Generator().manual_seed(1)
    obs = {"rgb": torch.rand(B, 2, 3, 32, 32, generator=g), "proprio": torch.rand(B, 2, 2, generator=g)}
    with torch.no_grad():
        return policy.encode_observation(obs)


def _sample(policy, cond, seed=2, **kw):
    noise = torch.randn(B, T, A, generator=torch.Generator().manual_seed(seed))
    kw.setdefault("scale", 0.0)
    return guided_ddim_sample(policy, cond, kw.pop("objective", None), ddim=policy.cfg.ddim, initial_noise=noise,
                              generator=[torch.Generator().manual_seed(10 + b) for b in range(B)], **kw)


def _previous(policy, cond, shift):
    """A previous chunk from the same policy (other noise), aligned ``shift`` steps later."""
    return shift_prefix(_sample(policy, cond, seed=3).actions, shift)


def first_dim_mean(actions: torch.Tensor) -> torch.Tensor:
    """A real guidance objective: the mean of action dimension 0 over the chunk's last 4 steps (B,)."""
    return actions[:, -4:, 0].mean(dim=1)


@pytest.mark.parametrize("horizon,frozen,overlap", [(16, 4, 8), (16, 8, 8), (16, 0, 12), (20, 12, 16), (16, 3, 16)])
def test_weight_schedule_shape(horizon, frozen, overlap):
    w = prefix_weights(horizon, frozen, overlap)
    assert w.shape == (horizon,) and w.dtype == torch.float32
    assert torch.all(w[:frozen] == 1) and torch.all(w[overlap:] == 0)
    decay = w[frozen:overlap]
    assert torch.all((decay > 0) & (decay < 1))
    assert torch.all(decay[1:] < decay[:-1])                       # strictly decreasing over the overlap
    if len(decay):                                                 # the paper's c_i (e^c_i - 1)/(e - 1)
        c = (overlap - frozen) / (overlap - frozen + 1)
        assert math.isclose(float(decay[0]), c * math.expm1(c) / math.expm1(1), rel_tol=1e-6)


@pytest.mark.parametrize("stochastic", [(1, "repeat"), (3, "renoise")])
@pytest.mark.parametrize("mode,jacobian", [("soft", False), ("hard", False), ("hard", True)])
def test_frozen_prefix_is_honoured(policy, cond, mode, jacobian, stochastic):
    frozen, shift = 5, 8
    prefix = _previous(policy, cond, shift)
    out = _sample(policy, cond, prefix=prefix, prefix_weights=prefix_weights(T, frozen, T - shift),
                  rtc=RTCConfig(mode=mode, jacobian=jacobian), stochastic_steps=stochastic[0],
                  stochastic_mode=stochastic[1]).actions
    free = _sample(policy, cond, stochastic_steps=stochastic[0], stochastic_mode=stochastic[1]).actions
    assert (free[:, :frozen] - prefix[:, :frozen]).abs().max() > 0.05  # without RTC the chunk disagrees
    if mode == "hard":
        assert torch.equal(out[:, :frozen], prefix[:, :frozen])
    else:
        assert (out[:, :frozen] - prefix[:, :frozen]).abs().max() < 1e-4
    # the decaying overlap is pulled towards the previous chunk; the rest stays a policy sample in [-1, 1]
    overlap = slice(frozen, T - shift)
    assert (out[:, overlap] - prefix[:, overlap]).abs().mean() < (free[:, overlap] - prefix[:, overlap]).abs().mean()
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0


@pytest.mark.parametrize("guided", [False, True])
def test_no_prefix_or_all_zero_mask_is_identical_to_before(policy, cond, guided):
    kw = {"objective": first_dim_mean, "scale": 2.0, "stochastic_steps": 2, "stochastic_mode": "renoise"} \
        if guided else {}
    plain = _sample(policy, cond, **kw).actions
    explicit_none = _sample(policy, cond, prefix=None, prefix_weights=None, rtc=RTCConfig(mode="hard"), **kw).actions
    zero_mask = _sample(policy, cond, prefix=_previous(policy, cond, 8), prefix_weights=torch.zeros(T), **kw).actions
    assert torch.equal(plain, explicit_none)
    assert torch.equal(plain, zero_mask)


@pytest.mark.parametrize("mode,jacobian", [("soft", False), ("hard", False), ("hard", True)])
def test_guidance_and_rtc_together_stay_finite_and_steer(policy, cond, mode, jacobian):
    """Same denoising steps: the prefix still holds on the DiffusionPolicy, and on the exact denoiser of N(0, 0.3²)
    data (where steering is well defined: an untrained network's noisy-chunk gradient is not) the gradient still
    moves the free tail of the chunk, as much as without RTC."""
    frozen, shift = 4, 8
    weights = prefix_weights(T, frozen, T - shift)
    prefix = _previous(policy, cond, shift)
    kw = dict(prefix=prefix, prefix_weights=weights, rtc=RTCConfig(mode=mode, jacobian=jacobian),
              objective=first_dim_mean)
    both = _sample(policy, cond, scale=1.0, **kw)
    assert torch.isfinite(both.actions).all()
    assert not torch.equal(both.actions, _sample(policy, cond, scale=0.0, **kw).actions)
    tol = 0.0 if mode == "hard" else 1e-4
    assert (both.actions[:, :frozen] - prefix[:, :frozen]).abs().max() <= tol

    gaussian = GaussianDataPolicy(std=0.3, horizon=T, action_dim=A)
    noise = torch.randn(64, T, A, generator=torch.Generator().manual_seed(5))
    y = torch.full((64, T, A), -0.5)

    def tail(scale, **extra):
        out = guided_ddim_sample(gaussian, None, first_dim_mean, scale=scale, initial_noise=noise,
                                 generator=torch.Generator().manual_seed(6), **extra)
        assert torch.isfinite(out.actions).all()
        return out

    plain_gain = tail(2.0).objective.mean() - tail(0.0).objective.mean()
    rtc = dict(prefix=y, prefix_weights=weights, rtc=RTCConfig(mode=mode, jacobian=jacobian))
    steered, unsteered = tail(2.0, **rtc), tail(0.0, **rtc)
    assert (steered.actions[:, :frozen] - y[:, :frozen]).abs().max() <= tol
    assert steered.objective.mean() - unsteered.objective.mean() > 0.5 * plain_gain > 0.05


def test_per_sample_weights_leave_samples_without_a_previous_chunk_unchanged(policy, cond):
    prefix = _previous(policy, cond, 8)
    weights = prefix_weights(T, 4, 8).repeat(B, 1)
    weights[1] = 0.0
    out = _sample(policy, cond, prefix=prefix, prefix_weights=weights).actions   # the default: hard + Jacobian
    plain = _sample(policy, cond).actions
    assert torch.equal(out[1], plain[1])
    assert (out[0, :4] - prefix[0, :4]).abs().max() < 1e-4


@pytest.mark.parametrize("kwargs,message", [
    ({"prefix": torch.zeros(B, T - 1, A), "prefix_weights": torch.ones(T)}, "prefix must have the chunk's shape"),
    ({"prefix": torch.zeros(B, T, A)}, "a prefix needs prefix_weights"),
    ({"prefix_weights": torch.ones(T)}, "prefix_weights given without a prefix"),
    ({"prefix": torch.zeros(B, T, A), "prefix_weights": torch.full((T,), 1.5)}, r"in \[0, 1\]"),
    ({"prefix": torch.zeros(B, T, A), "prefix_weights": torch.ones(T - 2)}, "prefix_weights must be"),
])
def test_bad_prefix_arguments_raise_one_clear_line(policy, cond, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sample(policy, cond, **kwargs)


def test_exact_jacobian_guidance_matches_the_jacobian_free_step_for_a_constant_noise_estimate():
    """With ε_θ independent of aᵏ (∂â⁰/∂aᵏ = 1/√ᾱ exactly) the VJP step equals the Jacobian-free one
    (without clipping of â⁰, which the Jacobian-free step applies only where W > 0)."""
    from dynaguide.diffusion import DDIMConfig

    class ConstantNoise(torch.nn.Module):
        horizon, action_dim = T, A

        def predict_noise(self, noisy_actions, timesteps, cond):
            return 0.1 * torch.ones_like(noisy_actions) + 0.0 * noisy_actions

    prefix = 0.3 * torch.ones(B, T, A)
    noise = 0.2 * torch.randn(B, T, A, generator=torch.Generator().manual_seed(0))
    outs = [guided_ddim_sample(ConstantNoise(), None, None, scale=0.0, initial_noise=noise, prefix=prefix,
                               ddim=DDIMConfig(clip_sample=False),
                               prefix_weights=prefix_weights(T, 4, 10), rtc=RTCConfig(mode="soft", jacobian=j)).actions
            for j in (False, True)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("field,value,message", [("mode", "inpaint", "rtc.mode"), ("beta", 0.0, "rtc.beta")])
def test_rtc_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        RTCConfig(**{field: value})


@pytest.mark.parametrize("compute_ms,dt,expected", [(0.0, 1 / 30, 0), (228.0, 1 / 30, 7), (301.0, 1 / 30, 10),
                                                    (100.0, 0.1, 1)])
def test_delay_steps_is_ceil_of_compute_over_dt(compute_ms, dt, expected):
    assert delay_steps(compute_ms, dt) == expected


def test_rtc_schedule_estimates_shift_and_delay_online():
    from dynaguide.guided_runner import RTCSchedule

    schedule = RTCSchedule(dt=0.1)
    assert schedule.request(1.0) == (None, 0)                       # nothing published yet
    schedule.done(1.0, latency_ms=250.0)
    assert schedule.request(1.8) == (8, 3)                          # 8 steps later; ceil(0.25 / 0.1) = 3
    schedule.done(1.8, latency_ms=0.0)                              # a lockstep clock: no delay
    lockstep = RTCSchedule(dt=0.1)
    lockstep.done(0.0, 0.0)
    assert lockstep.request(0.8) == (8, 0)


@pytest.mark.parametrize("mode,jacobian", [("soft", False), ("hard", True)])
def test_runner_freezes_the_previous_chunks_actions_that_run_during_the_delay(mode, jacobian):
    import numpy as np

    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    runner = GuidedPolicyRunner.from_config(RunnerConfig(rtc=RTCConfig(enabled=True, mode=mode, jacobian=jacobian)))
    rng = np.random.default_rng(0)
    images = {"rgb_static": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)}
    proprio = rng.normal(size=(2, 15)).astype(np.float32)
    first = runner.act(images, proprio, None)
    assert first.frozen_steps == 0
    lockstep = runner.act(images, proprio, None, rtc_shift=8, rtc_delay=0)   # no delay: unconstrained
    assert lockstep.frozen_steps == 0
    previous = lockstep.actions
    second = runner.act(images, proprio, None, rtc_shift=8, rtc_delay=3)
    assert second.frozen_steps == 3
    tol = 0.0 if mode == "hard" else 1e-4
    np.testing.assert_allclose(second.actions[:3], previous[8:11], atol=tol, rtol=0)
    assert np.isfinite(second.actions).all()
    beyond = runner.act(images, proprio, None, rtc_shift=16, rtc_delay=3)      # the previous chunk has ended
    assert beyond.frozen_steps == 0


@pytest.mark.parametrize("rtc", [None, RTCConfig(mode="hard", jacobian=True)])
def test_conditioning_reuse_is_bit_identical_and_skips_the_repeats(policy, cond, rtc):
    """Exact speed-up: with M stochastic steps the FiLM conditioning of a noise level is computed once, not M
    times (counted on the step encoder), and the chunk is bit for bit the one with every call recomputing it —
    guided, and with RTC's Jacobian pass (grad mode) between the inference-mode calls."""
    from dynaguide.policy.unet import ConditionalUnet1D

    kw = dict(scale=1.0, objective=first_dim_mean, stochastic_steps=4, stochastic_mode="renoise")
    if rtc is not None:
        kw.update(prefix=_previous(policy, cond, 8), prefix_weights=prefix_weights(T, 4, 8), rtc=rtc)
    calls = []
    hook = policy.noise_net.step_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        reused = _sample(policy, cond, **kw)
        reused_calls, calls[:] = len(calls), []
        ConditionalUnet1D.reuse_conditioning = False
        recomputed = _sample(policy, cond, **kw)
    finally:
        ConditionalUnet1D.reuse_conditioning = True
        hook.remove()
    steps = policy.cfg.ddim.num_inference_steps
    per_level = 2 if rtc is not None else 1   # the Jacobian pass runs in grad mode: its own cache
    assert reused_calls == per_level * steps and len(calls) == per_level * 4 * steps
    assert torch.equal(reused.actions, recomputed.actions)


def test_conditioning_is_not_reused_in_training_or_for_new_inputs(policy, cond):
    """A changed conditioning tensor (new object or in-place edit) is recomputed; training mode never reuses."""
    x = torch.randn(B, T, A, generator=torch.Generator().manual_seed(7))
    steps = torch.full((B,), 50, dtype=torch.long)
    with torch.no_grad():
        first = policy.predict_noise(x, steps, cond)
        edited = cond.clone()
        again = policy.predict_noise(x, steps, edited)
        assert torch.equal(first, again)
        edited.add_(1.0)                      # same object, new version: must not reuse the stale modulation
        moved = policy.predict_noise(x, steps, edited)
        assert not torch.equal(moved, first)
        assert torch.equal(moved, policy.predict_noise(x, steps, edited.clone()))
    with torch.inference_mode():              # inference tensors have no version counter: never reused
        frozen_cond, frozen_steps = cond.clone(), steps.clone()
        first = policy.predict_noise(x, frozen_steps, frozen_cond)
        frozen_cond.add_(1.0)
        assert torch.equal(policy.predict_noise(x, frozen_steps, frozen_cond), moved)
    policy.train()
    try:
        with torch.no_grad():
            policy.predict_noise(x, steps, cond)
        assert policy.noise_net._cached_modulations is None
    finally:
        policy.eval()
