"""The guidance signal of a chunk (dynaguide.guidance.signal): the sampler's unguided proposal and the returned
chunk scored against the goals — guidance must visibly pull the prediction towards them."""

from __future__ import annotations

import math

import numpy as np
import torch

from dynaguide.diffusion import make_ddim_scheduler
from dynaguide.guidance import guided_ddim_sample
from dynaguide.guidance.signal import GuidanceSignal, OutcomeScore, guidance_signal, signal_from_pairs

from test_core_guidance_sampler import A, T, GaussianDataPolicy, TinyPolicy, make_inputs, mean_objective


def test_guidance_pulls_the_chunk_towards_the_positive_and_away_from_the_negative():
    policy = GaussianDataPolicy(std=0.3)
    noise = torch.randn(1, T, A, generator=torch.Generator().manual_seed(4))
    positives = torch.stack([torch.full((1, A), 0.5), torch.full((1, A), -3.0)])   # goal 0 is the reachable one
    objective = mean_objective(positives, torch.full((1, 1, A), -0.5), sigma=0.2)
    out = guided_ddim_sample(policy, None, objective, scale=3.0, stochastic_steps=2, initial_noise=noise)
    sig = guidance_signal(objective, out.proposal, out.actions)
    assert sig.chunk.nearest_positive == 0 and sig.chunk.nearest_goal == "positive 0"
    assert sig.chunk.positive_distance < 0.5 * sig.proposal.positive_distance, sig
    assert sig.chunk.negative_distance > sig.proposal.negative_distance, sig
    assert sig.chunk.metric > sig.proposal.metric + 1.0, sig
    assert math.isclose(sig.chunk.metric, float(out.objective[0]), rel_tol=1e-5, abs_tol=1e-5)
    # distances are the metric's: Euclidean distance of the mean action to the goal
    mean = out.actions[0].mean(0)
    assert math.isclose(sig.chunk.positive_distance, float(torch.linalg.vector_norm(mean - 0.5)), rel_tol=1e-5)
    assert sig.scale == objective.guidance_set.scale and sig.sigma == 0.2 and not sig.squared   # the set in force


def test_the_proposal_is_the_unguided_denoised_estimate_at_the_first_guided_step():
    policy = TinyPolicy()
    cond, noise = make_inputs(batch=2)
    objective = mean_objective(torch.full((1, 1, A), 0.5))
    out = guided_ddim_sample(policy, cond, objective, scale=5.0, initial_noise=noise, guided_steps=3)
    # by hand: plain DDIM up to the first guided step, then â⁰ from that step's noise estimate
    scheduler = make_ddim_scheduler()
    x = noise
    steps = list(scheduler.timesteps)
    for t in steps[: len(steps) - 3]:
        with torch.no_grad():
            x = scheduler.step(policy.predict_noise(x, torch.full((2,), int(t)), cond), int(t), x).prev_sample
    t = int(steps[len(steps) - 3])
    with torch.no_grad():
        eps = policy.predict_noise(x, torch.full((2,), t), cond)
    a = float(scheduler.alphas_cumprod[t])
    expected = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    torch.testing.assert_close(out.proposal, expected)
    assert not torch.allclose(out.proposal, out.actions)
    # unguided (s = 0): the first step's estimate, and the chunk bit for bit the plain sampler's
    plain = guided_ddim_sample(policy, cond, objective, scale=0.0, initial_noise=noise)
    assert plain.proposal is not None and plain.proposal.shape == (2, T, A)


def test_pairs_round_trip_and_nearest_goal_of_either_kind():
    score = OutcomeScore(metric=-1.5, positive_distance=math.nan, nearest_positive=-1, negative_distance=2.0,
                         nearest_negative=3)
    assert score.nearest_goal == "negative 3"
    sig = GuidanceSignal(score, OutcomeScore(0.25, 1.0, 2, 4.0, 0), scale=4.0, sigma=30.0)
    pairs = dict(sig.as_pairs())
    assert pairs["chunk.nearest_goal"] == "positive 2" and pairs["proposal.nearest_goal"] == "negative 3"
    back = signal_from_pairs(pairs)
    assert back.chunk == sig.chunk and back.scale == 4.0 and math.isnan(back.proposal.positive_distance)
    assert signal_from_pairs({"chunk.metric": "x"}) is None and signal_from_pairs({}) is None


def test_the_runner_returns_the_signal_when_goals_are_set_also_with_scale_zero():
    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    runner = GuidedPolicyRunner.from_config(RunnerConfig(embed_tokens=16, embed_dim=8))
    rng = np.random.default_rng(0)
    images = {"rgb_static": rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)}
    proprio = rng.standard_normal((2, 15)).astype(np.float32)
    tokens = rng.standard_normal((16, 8)).astype(np.float32)
    runner.set_guidance_tokens(rng.standard_normal((3, 16, 8)), rng.standard_normal((1, 16, 8)),
                               runner.guidance_defaults.retuned(scale=2.0, stochastic_steps=1))
    guided = runner.act(images, proprio, tokens)
    assert guided.signal is not None and math.isclose(guided.signal.chunk.metric, guided.metric, rel_tol=1e-4)
    assert 0 <= guided.signal.chunk.nearest_positive < 3 and guided.signal.chunk.nearest_negative == 0
    assert guided.signal.proposal != guided.signal.chunk
    runner.guidance.config.scale = 0.0
    zero = runner.act(images, proprio, tokens)
    assert not zero.guided and zero.signal is not None and np.isfinite(zero.signal.chunk.metric)
    runner.clear_guidance()
    assert runner.act(images, proprio, None).signal is None
