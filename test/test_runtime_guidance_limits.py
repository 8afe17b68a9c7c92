"""Unusable guidance settings: σ too small (or not a number) is refused and the previous guidance kept; guidance
that is not finite falls back to the base policy; a scale of zero is expressible and means unguided."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("sigma", [1e-45, 1e-9, 0.0, float("nan"), -1.0])
def test_guidance_config_rejects_unusable_sigma(sigma):
    from dynaguide.guidance.goals import GuidanceConfig

    with pytest.raises(ValueError, match="sigma"):
        GuidanceConfig(sigma=sigma)


@pytest.fixture(scope="module")
def runner_and_inputs():
    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    runner = GuidedPolicyRunner.from_config(RunnerConfig(embed_tokens=16, embed_dim=8))
    rng = np.random.default_rng(0)
    images = {"rgb_static": rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)}
    proprio = rng.standard_normal((2, 15)).astype(np.float32)
    tokens = rng.standard_normal((16, 8)).astype(np.float32)
    return runner, images, proprio, tokens


def test_runner_refuses_unusable_sigma_and_keeps_the_previous_guidance(runner_and_inputs):
    runner, *_ = runner_and_inputs
    rng = np.random.default_rng(1)
    g = runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
    with pytest.raises(ValueError, match="sigma"):
        runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None, runner.guidance_defaults.retuned(sigma=1e-45))
    assert runner.guidance is g


@pytest.mark.parametrize("break_guidance", ["sigma_bypassing_validation", "overflowing_goals"])
def test_runner_falls_back_to_the_base_policy_when_guidance_is_not_finite(runner_and_inputs, break_guidance):
    runner, images, proprio, tokens = runner_and_inputs
    rng = np.random.default_rng(2)
    if break_guidance == "sigma_bypassing_validation":
        runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
        runner.guidance.config.sigma = 1e-45
    else:  # finite goals whose distances overflow float32
        runner.set_guidance_tokens(np.full((1, 16, 8), 1e30), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
    result = runner.act(images, proprio, tokens)
    assert not result.guided and "fell back" in result.fallback and "not finite" in result.fallback
    assert np.isfinite(result.actions).all() and np.isnan(result.metric)
    runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                               runner.guidance_defaults.retuned(sigma=5.0, stochastic_steps=1))
    ok = runner.act(images, proprio, tokens)
    assert ok.guided and ok.fallback == "" and np.isfinite(ok.metric)


def test_scale_zero_is_expressible(runner_and_inputs):
    runner, images, proprio, tokens = runner_and_inputs
    g = runner.set_guidance_tokens(np.random.default_rng(3).standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(scale=0.0))
    assert g.scale == 0.0                                    # not mapped to the default any more
    assert not runner.act(images, proprio, tokens).guided   # s = 0: the unguided sampler
    with pytest.raises(ValueError, match="scale"):
        runner.set_guidance_tokens(np.zeros((1, 16, 8)), None, runner.guidance_defaults.retuned(scale=-1.0))
