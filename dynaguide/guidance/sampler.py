"""Guided DDIM sampling: Algorithm 1 / Eq. 3 of the DynaGuide paper, batched.

At every denoising step k the policy's noise estimate is shifted by the gradient of a guidance
objective d (higher = more desired), taken w.r.t. the *current noisy chunk* aᵏ::

    ε̃ = ε_θ(aᵏ, k, o) − s · √(1 − ᾱ_k) · ∇_{aᵏ} d(aᵏ)
    aᵏ⁻¹ = DDIM_step(ε̃, k, aᵏ)               (diffusers ``DDIMScheduler.step``, η = 0)

Stochastic sampling repeats each step M times (``stochastic_steps``):

* ``"repeat"`` (official DynaGuide code): the DDIM step is applied M times with the same k, each
  time to the result of the previous one.
* ``"renoise"`` (ITPS / universal-guidance self-recurrence): after each of the first M − 1 steps the
  result aᵏ⁻¹ is pushed back to noise level k with the scheduler's forward process,
  ``aᵏ = √(ᾱ_k/ᾱ_{k−1}) · aᵏ⁻¹ + √(1 − ᾱ_k/ᾱ_{k−1}) · ε``, ε ~ N(0, I); the M-th step is kept.

Engineering guarantees (all tested):

* no autograd graph survives a step: the policy runs under ``torch.inference_mode()``; the objective's
  gradient is computed inside ``torch.enable_grad()`` on a fresh detached leaf and detached;
* batched: sample b's gradient depends only on sample b (objectives must score samples
  independently, see :class:`dynaguide.interfaces.GuidanceObjective`), so a batch of B equals B
  runs of batch 1 given the same initial noise;
* ``scale == 0`` or ``objective is None`` never touches the objective, so the result is bit for bit
  the unguided DDIM sample for the same initial noise (with M = 1, the standard sampler);
* ``policy_executor`` (a one-thread executor) evaluates the policy's noise estimate *concurrently* with the
  objective's gradient — both read the same noisy chunk aᵏ and neither depends on the other — and gives
  bit for bit the same chunk as the sequential loop (the operations and their order per tensor are unchanged).

Two options change the computation (off by default): ``guided_steps = k`` applies guidance (and the M
stochastic repeats) only on the last k of the DDIM steps, the earlier, noisiest steps are plain DDIM steps
(cheaper); ``guidance_input = "denoised"`` scores the policy's denoised estimate instead of the noisy chunk
(:data:`GUIDANCE_INPUTS`; the policy's noise estimate is then needed first, so it runs sequentially).

Real-time chunking (off unless a ``prefix`` is given): the previous chunk's remaining actions constrain the new
chunk's first steps, in the same DDIM step as the guidance gradient — soft (Jacobian-free ΠGDM on the denoised
estimate) or hard (inpainting); see :mod:`dynaguide.guidance.rtc`.  Without a prefix the loop is unchanged.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal
from collections.abc import Sequence

import torch

from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.guidance.rtc import RTCConfig
from dynaguide.interfaces import GuidanceObjective, NoisePredictionPolicy

StochasticMode = Literal["repeat", "renoise"]
STOCHASTIC_MODES: tuple[str, ...] = ("repeat", "renoise")
GUIDANCE_INPUTS: tuple[str, ...] = ("noisy", "denoised")
"""What the objective scores at step k: the noisy chunk aᵏ (the paper's Eq. 3) or the policy's denoised
estimate â⁰ = clip((aᵏ − √(1 − ᾱ_k) ε_θ) / √ᾱ_k) — whose gradient w.r.t. â⁰ then replaces ∇_{aᵏ} d in Eq. 3
(the Jacobian of ε_θ is not taken: no backward pass through the policy)."""

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, or one per sample (then batched = sequential exactly)."""


@dataclass
class SampleTimings:
    """Where the time of one :func:`guided_ddim_sample` call went (milliseconds, call counts)."""

    total_ms: float
    policy_ms: float
    guidance_ms: float
    policy_calls: int
    guidance_calls: int


@dataclass
class GuidedSample:
    """Result of :func:`guided_ddim_sample`.

    Attributes:
        actions: ``(B, T, A)`` denoised action chunk, *normalised* (policy space, nominally [-1, 1]).
        objective: ``(B,)`` objective of the final chunk (no gradient), or None when unguided.
        timings: wall-clock breakdown of the call.
        proposal: ``(B, T, A)`` normalised: the base policy's *proposal* — its denoised estimate
            â⁰ = clip((aᵏ − √(1 − ᾱ_k) ε_θ) / √ᾱ_k) at the first guided DDIM step k (the first step when unguided),
            from the noise estimate the loop computes anyway, before any guidance gradient has shifted the chunk.
            A one-step estimate of what the unguided policy would do from this noise, not a second full sample;
            :mod:`dynaguide.guidance.signal` scores it against the guided chunk.
    """

    actions: torch.Tensor
    objective: torch.Tensor | None
    timings: SampleTimings
    proposal: torch.Tensor | None = None


def sample_noise(
    shape: Sequence[int], generator: GeneratorArg, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, sample b uses ``generator[b]``."""
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        return noise.to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per sample")
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    )


def alpha_bar(scheduler: Any, timestep: int) -> torch.Tensor:
    """ᾱ at a (train-scale) timestep; negative timesteps mean "fully denoised" (``final_alpha_cumprod``)."""
    return scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod


def previous_timestep(scheduler: Any, timestep: int) -> int:
    """The timestep ``DDIMScheduler.step`` moves to from ``timestep`` (may be negative at the end)."""
    return timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def renoise(
    sample: torch.Tensor, scheduler: Any, from_timestep: int, to_timestep: int, noise: torch.Tensor
) -> torch.Tensor:
    """Forward-diffuse ``sample`` from noise level ``from_timestep`` up to ``to_timestep`` (> from).

    ``x_to = √(ᾱ_to/ᾱ_from) · x_from + √(1 − ᾱ_to/ᾱ_from) · noise`` — the marginal of the
    scheduler's forward process between the two levels.  Shapes: ``sample``, ``noise`` ``(B, T, A)``.
    """
    ratio = float(alpha_bar(scheduler, to_timestep)) / float(alpha_bar(scheduler, from_timestep))
    return math.sqrt(ratio) * sample + math.sqrt(max(0.0, 1.0 - ratio)) * noise


def objective_value_and_grad(
    objective: GuidanceObjective, noisy_actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate ``objective`` and its gradient w.r.t. ``noisy_actions`` without leaking a graph.

    Args:
        objective: maps ``(B, T, A)`` → ``(B,)``, samples scored independently.
        noisy_actions: ``(B, T, A)``.

    Returns:
        ``values (B,)`` and ``grad (B, T, A)``, both detached.  Because samples are independent,
        the gradient of ``values.sum()`` is each sample's own gradient.
    """
    with torch.enable_grad():
        leaf = noisy_actions.detach().requires_grad_(True)
        values = objective(leaf)
        if not isinstance(values, torch.Tensor) or values.shape != (noisy_actions.shape[0],):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"guidance objective must return shape (B,) = ({noisy_actions.shape[0]},), got {shape}")
        if not values.requires_grad:
            raise ValueError("guidance objective output does not depend differentiably on the actions")
        (grad,) = torch.autograd.grad(values.sum(), leaf)
    values, grad = values.detach(), grad.detach()
    if not (torch.isfinite(grad).all() and torch.isfinite(values).all()):
        raise ValueError("guidance objective or its gradient is not finite (NaN/inf); "
                         "refusing to produce actions from it")
    return values, grad


def _timed_noise_estimate(policy: Any, sample: torch.Tensor, timesteps: torch.Tensor,
                          cond: Any) -> tuple[torch.Tensor, float]:
    """``policy.predict_noise`` without autograd (grad mode is per thread: set here), and its seconds.  Inference
    mode: no view or version-counter tracking (the same kernels, the same values; ε is only read afterwards)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        eps = policy.predict_noise(sample, timesteps, cond)
    return eps, time.perf_counter() - t0


def _denoised_estimate(sample: torch.Tensor, eps: torch.Tensor, timestep: int, scheduler: Any) -> torch.Tensor:
    """â⁰ = (aᵏ − √(1 − ᾱ_k) ε) / √ᾱ_k, clipped as the scheduler clips it; ``(B, T, A)``, detached."""
    a = float(alpha_bar(scheduler, timestep))
    with torch.no_grad():
        x0 = (sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        if scheduler.config.clip_sample:
            r = float(scheduler.config.clip_sample_range)
            x0 = x0.clamp(-r, r)
    return x0.detach()


def _infer_batch_size(cond: Any) -> int | None:
    if isinstance(cond, torch.Tensor):
        return int(cond.shape[0]) if cond.dim() > 0 else None
    if isinstance(cond, dict):
        for value in cond.values():
            size = _infer_batch_size(value)
            if size is not None:
                return size
    if isinstance(cond, (list, tuple)):
        for value in cond:
            size = _infer_batch_size(value)
            if size is not None:
                return size
    return None


def _policy_device_dtype(policy: Any) -> tuple[torch.device, torch.dtype]:
    if isinstance(policy, torch.nn.Module):
        for p in policy.parameters():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@dataclass
class _RTCTerms:
    """The prefix constraint prepared once per call: ``prefix (B, T, A)``; ``soft (B, T, 1)`` weights of the
    soft guidance (None: no step has one); ``hard (B, T, 1)`` bool mask of inpainted steps (None: soft mode);
    ``beta``: the weight clip."""

    prefix: torch.Tensor
    soft: torch.Tensor | None
    hard: torch.Tensor | None
    beta: float
    full: torch.Tensor | None = None   # (B, T, 1) all weights: the error whose VJP is taken (``jacobian``)
    clip: float | None = None          # the scheduler's clip of â⁰ (None: no clipping)


def _rtc_terms(prefix: torch.Tensor, weights: torch.Tensor | None, cfg: RTCConfig,
               sample: torch.Tensor, scheduler: Any) -> _RTCTerms:
    if not isinstance(prefix, torch.Tensor) or tuple(prefix.shape) != tuple(sample.shape):
        shape = tuple(prefix.shape) if isinstance(prefix, torch.Tensor) else type(prefix).__name__
        raise ValueError(f"prefix must have the chunk's shape (B, T, A) = {tuple(sample.shape)}, got {shape}")
    if weights is None:
        raise ValueError("a prefix needs prefix_weights (T,) or (B, T): see dynaguide.guidance.rtc.prefix_weights")
    batch, horizon = sample.shape[:2]
    weights = torch.as_tensor(weights).to(device=sample.device, dtype=sample.dtype)
    if weights.dim() == 1:
        weights = weights.expand(batch, horizon) if weights.shape[0] == horizon else weights
    if tuple(weights.shape) != (batch, horizon):
        raise ValueError(f"prefix_weights must be (T,) = ({horizon},) or (B, T) = ({batch}, {horizon}), "
                         f"got {tuple(weights.shape)}")
    if not (torch.isfinite(weights).all() and (weights >= 0).all() and (weights <= 1).all()):
        raise ValueError("prefix_weights must be finite and in [0, 1]")
    prefix = prefix.detach().to(device=sample.device, dtype=sample.dtype)
    weights = weights[..., None]
    if not torch.isfinite(prefix[(weights > 0).expand_as(prefix)]).all():
        raise ValueError("prefix contains NaN or infinite actions where its weight is > 0")
    prefix = torch.where(weights > 0, prefix, torch.zeros_like(prefix))
    full = weights
    hard = None
    if cfg.mode == "hard":
        hard = weights >= 1
        weights = torch.where(hard, torch.zeros_like(weights), weights)
        hard = hard if bool(hard.any()) else None
    soft = weights if bool((weights > 0).any()) else None
    clip = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
    return _RTCTerms(prefix, soft, hard, float(cfg.beta), full if cfg.jacobian else None, clip)


def _rtc_vjp(eps: torch.Tensor, sample: torch.Tensor, timestep: int, terms: _RTCTerms, policy: Any,
             timesteps: torch.Tensor, cond: Any, a: float, lam: float) -> torch.Tensor:
    """Exact ΠGDM: ``ε − (ᾱ/√(1−ᾱ)) λ g`` with ``g = (W ⊙ (y − â⁰))ᵀ ∂â⁰/∂aᵏ`` through the policy (â⁰ of the
    guided ``eps``, its Jacobian from a second, differentiable policy call).  Shapes ``(B, T, A)``."""
    x0 = (sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
    if terms.clip is not None:
        x0 = x0.clamp(-terms.clip, terms.clip)
    error = (terms.full * (terms.prefix - x0)).detach()
    with torch.enable_grad():
        leaf = sample.detach().requires_grad_(True)
        x0_of_leaf = (leaf - math.sqrt(1.0 - a) * policy.predict_noise(leaf, timesteps, cond)) / math.sqrt(a)
        (g,) = torch.autograd.grad(x0_of_leaf, leaf, grad_outputs=error)
    return eps - (a / math.sqrt(1.0 - a)) * lam * g.detach()


def _rtc_guide(eps: torch.Tensor, sample: torch.Tensor, timestep: int, scheduler: Any, terms: _RTCTerms,
              policy: Any = None, timesteps: torch.Tensor | None = None, cond: Any = None) -> torch.Tensor:
    """ε whose denoised estimate is ``â⁰ + λ_k W (y − â⁰)``, ``λ_k = min(β, 1/ᾱ_k)``, where W > 0 (ε elsewhere):
    the Jacobian-free ΠGDM step of :mod:`dynaguide.guidance.rtc` (with ``terms.full``: the exact one,
    :func:`_rtc_vjp`).  Shapes ``(B, T, A)``."""
    a = float(alpha_bar(scheduler, timestep))
    lam = min(terms.beta, 1.0 / a)
    if terms.full is not None:
        return _rtc_vjp(eps, sample, timestep, terms, policy, timesteps, cond, a, lam)
    if terms.soft is None:
        return eps
    with torch.no_grad():
        x0 = (sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        if terms.clip is not None:
            x0 = x0.clamp(-terms.clip, terms.clip)
        target = x0 + lam * terms.soft * (terms.prefix - x0)
        return torch.where(terms.soft > 0, (sample - math.sqrt(a) * target) / math.sqrt(1.0 - a), eps)


def _rtc_inpaint(denoised: torch.Tensor, timestep: int, scheduler: Any, terms: _RTCTerms,
                 generator: GeneratorArg) -> torch.Tensor:
    """Hard mode: the frozen steps of ``denoised`` (at the level after ``timestep``) replaced by the prefix
    forward-noised to that level; by the prefix itself after the last step.  Shapes ``(B, T, A)``."""
    to = previous_timestep(scheduler, timestep)
    if to < 0:
        noised = terms.prefix
    else:
        a = float(alpha_bar(scheduler, to))
        noise = sample_noise(denoised.shape, generator, denoised.device, denoised.dtype)
        noised = math.sqrt(a) * terms.prefix + math.sqrt(1.0 - a) * noise
    return torch.where(terms.hard, noised, denoised)


def guided_ddim_sample(
    policy: NoisePredictionPolicy,
    cond: Any,
    objective: GuidanceObjective | None,
    *,
    scale: float,
    ddim: DDIMConfig | None = None,
    stochastic_steps: int = 1,
    stochastic_mode: StochasticMode = "repeat",
    initial_noise: torch.Tensor | None = None,
    generator: GeneratorArg = None,
    batch_size: int | None = None,
    guided_steps: int | None = None,
    guidance_input: str = "noisy",
    policy_executor: Executor | None = None,
    prefix: torch.Tensor | None = None,
    prefix_weights: torch.Tensor | None = None,
    rtc: RTCConfig | None = None,
) -> GuidedSample:
    """Sample an action chunk with DDIM, steered by ``objective`` (Algorithm 1 of the paper).

    Args:
        policy: epsilon-prediction policy; ``predict_noise`` is called under ``torch.inference_mode()``.
        cond: conditioning from ``policy.encode_observation`` for B observations.
        objective: differentiable score ``(B, T, A)`` → ``(B,)`` of noisy chunks, or None (unguided).
        scale: guidance strength s ≥ 0; 0 skips the objective entirely.
        ddim: schedule (paper defaults when None); a fresh scheduler is built per call.
        stochastic_steps: M ≥ 1 denoising steps per noise level (1 = plain DDIM).
        stochastic_mode: ``"repeat"`` (official) or ``"renoise"`` (ITPS/universal guidance).
        initial_noise: ``(B, T, A)`` starting noise aᴷ; drawn from ``generator`` when None.
        generator: torch generator(s) for the initial noise and re-noising (one per sample allowed).
        batch_size: B, needed only when neither ``initial_noise`` nor ``cond`` reveals it.
        guided_steps: guide (and repeat M times) only the last ``guided_steps`` DDIM steps; None = all.
        guidance_input: ``"noisy"`` (Eq. 3) or ``"denoised"``: see :data:`GUIDANCE_INPUTS`.
        policy_executor: run ``policy.predict_noise`` on this executor while the objective's gradient is
            computed on the calling thread (same result; faster when a second core is free).
        prefix: real-time chunking: ``(B, T, A)`` normalised actions the new chunk should agree with (the previous
            chunk's remaining actions aligned to this chunk, :func:`dynaguide.guidance.rtc.shift_prefix`); None = off.
        prefix_weights: ``(T,)`` or ``(B, T)`` soft mask in [0, 1] (:func:`dynaguide.guidance.rtc.prefix_weights`);
            required with ``prefix``.
        rtc: mode, β and Jacobian option of the prefix constraint (:class:`dynaguide.guidance.rtc.RTCConfig`; its
            defaults when None).  With ``rtc.jacobian`` each step makes one more (differentiable) policy call,
            counted in ``timings.policy_calls``.

    Returns:
        :class:`GuidedSample` with normalised ``actions (B, T, A)``; every returned tensor is detached.
    """
    start = time.perf_counter()
    if not isinstance(stochastic_steps, int) or stochastic_steps < 1:
        raise ValueError(f"stochastic_steps (M) must be an integer >= 1, got {stochastic_steps!r}")
    if stochastic_mode not in STOCHASTIC_MODES:
        raise ValueError(f"stochastic_mode must be one of {STOCHASTIC_MODES}, got {stochastic_mode!r}")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be finite and >= 0, got {scale}")
    if guided_steps is not None and (not isinstance(guided_steps, int) or guided_steps < 1):
        raise ValueError(f"guided_steps must be None (all steps) or an integer >= 1, got {guided_steps!r}")
    if guidance_input not in GUIDANCE_INPUTS:
        raise ValueError(f"guidance_input must be one of {GUIDANCE_INPUTS}, got {guidance_input!r}")
    guided = objective is not None and scale != 0.0
    on_denoised = guidance_input == "denoised"

    device, dtype = _policy_device_dtype(policy)
    if initial_noise is None:
        batch = batch_size if batch_size is not None else _infer_batch_size(cond)
        if batch is None:
            raise ValueError("cannot tell the batch size from cond; pass batch_size or initial_noise")
        initial_noise = sample_noise((batch, policy.horizon, policy.action_dim), generator, device, dtype)
    expected = (initial_noise.shape[0], policy.horizon, policy.action_dim)
    if initial_noise.dim() != 3 or tuple(initial_noise.shape) != expected:
        raise ValueError(f"initial_noise must have shape (B, T, A) = {expected}, got {tuple(initial_noise.shape)}")
    if batch_size is not None and initial_noise.shape[0] != batch_size:
        raise ValueError(f"batch_size={batch_size} but initial_noise has batch {initial_noise.shape[0]}")

    scheduler = make_ddim_scheduler(ddim)
    sample = initial_noise.detach()
    batch = sample.shape[0]
    rtc_terms = None
    if prefix is not None:
        rtc_terms = _rtc_terms(prefix, prefix_weights, rtc or RTCConfig(), sample, scheduler)
    if prefix is None and prefix_weights is not None:
        raise ValueError("prefix_weights given without a prefix: pass the previous chunk's actions as prefix")
    policy_s = guidance_s = 0.0
    policy_calls = guidance_calls = 0

    n_steps = len(scheduler.timesteps)
    first_guided = 0 if guided_steps is None or not guided else max(0, n_steps - guided_steps)
    proposal = None
    for step_index, timestep_tensor in enumerate(scheduler.timesteps):
        timestep = int(timestep_tensor)
        timesteps = torch.full((batch,), timestep, dtype=torch.long, device=sample.device)
        guidance_coef = scale * math.sqrt(1.0 - float(alpha_bar(scheduler, timestep)))
        guide_now = guided and step_index >= first_guided
        repeats = stochastic_steps if guide_now or not guided else 1
        for repeat in range(repeats):
            future = None
            if guide_now and policy_executor is not None and not on_denoised:
                future = policy_executor.submit(_timed_noise_estimate, policy, sample, timesteps, cond)
            else:
                eps, seconds = _timed_noise_estimate(policy, sample, timesteps, cond)
            if guide_now:
                t0 = time.perf_counter()
                scored = sample
                if on_denoised:
                    a = float(alpha_bar(scheduler, timestep))
                    scored = ((sample - math.sqrt(1.0 - a) * eps) / math.sqrt(a)).clamp(-1.0, 1.0)
                _, grad = objective_value_and_grad(objective, scored)
                guidance_s += time.perf_counter() - t0
                guidance_calls += 1
                if future is not None:
                    eps, seconds = future.result()
            policy_s += seconds
            policy_calls += 1
            if eps.shape != sample.shape:
                raise ValueError(f"policy.predict_noise returned shape {tuple(eps.shape)}, "
                                 f"expected {tuple(sample.shape)}")
            if proposal is None and step_index == first_guided:
                proposal = _denoised_estimate(sample, eps, timestep, scheduler)
            if guide_now:
                eps = eps - guidance_coef * grad
            if rtc_terms is not None:
                t0 = time.perf_counter()
                eps = _rtc_guide(eps, sample, timestep, scheduler, rtc_terms, policy, timesteps, cond)
                if rtc_terms.full is not None:   # the VJP's policy pass (forward + backward) counts as policy time
                    policy_s += time.perf_counter() - t0
                    policy_calls += 1
            with torch.no_grad():
                denoised = scheduler.step(eps, timestep, sample).prev_sample
                if rtc_terms is not None and rtc_terms.hard is not None:
                    denoised = _rtc_inpaint(denoised, timestep, scheduler, rtc_terms, generator)
                if stochastic_mode == "renoise" and repeat < repeats - 1:
                    noise = sample_noise(sample.shape, generator, sample.device, sample.dtype)
                    sample = renoise(denoised, scheduler, previous_timestep(scheduler, timestep), timestep, noise)
                else:
                    sample = denoised

    final_objective = None
    if objective is not None:
        with torch.no_grad():
            final_objective = objective(sample).detach()
    total_ms = (time.perf_counter() - start) * 1e3
    timings = SampleTimings(total_ms, policy_s * 1e3, guidance_s * 1e3, policy_calls, guidance_calls)
    return GuidedSample(actions=sample.detach(), objective=final_objective, timings=timings, proposal=proposal)
