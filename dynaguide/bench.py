"""``dynaguide bench guidance``: how fast is a guided chunk, and does it match the official loop?
(``dynaguide bench embedder``: ms per image of the embedder, see :func:`bench_embedder`.)

For each model configuration (``cpu``, ``paper`` — Core-Models' ``DiffusionPolicyConfig`` and
``LatentDynamicsConfig`` presets, **randomly initialised**: timing does not depend on trained weights)
this measures, per action chunk (T = 16, K = 10 positive goals, M = 4, 10 DDIM steps):

* ``guided_ms`` — :func:`dynaguide.guidance.guided_ddim_sample` with :class:`DynaGuideObjective`,
  B chunks in one batched call, divided by B;
* ``unguided_ms`` — the base policy alone (same sampler, no objective, M = 1), divided by B;
* ``naive_guided_ms`` — :func:`naive_official_guided_sample` below, a deliberately naive
  re-implementation of the official MaxDu17/DynaGuide loop (batch 1, the noisy chunk requires grad
  so the autograd graph of every policy call and DDIM step is kept across all steps), run B times
  sequentially, divided by B;
* ``speedup_vs_naive`` = naive / guided, and ``max_abs_diff_vs_naive`` — the largest absolute
  difference between the batched guided actions and the naive ones for the same initial noise.

Conditioning (``encode_observation``) and the current frame's tokens are computed once per chunk
*outside* the timed loop for all three variants, so the figures are the denoising loop's cost.
Every number is the median over ``--repeats`` timed runs after one warm-up run (one chunk for the
naive loop; the warm-up also measures the peak memory autograd holds in saved activations, weights
excluded —
``guided_peak_saved_mb`` for the batched call, ``naive_peak_saved_mb_per_chunk`` for one naive chunk); the three
variants are interleaved run by run so drifting machine load hits them alike.
"""

from __future__ import annotations

import os
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.guidance import DynaGuideObjective, GuidanceConfig, GoalLatents, guided_ddim_sample

CONFIG_NAMES = ("cpu", "paper")


# ------------------------------------------------------------------------------ naive reference
def naive_official_guided_sample(
    policy: Any,
    cond: torch.Tensor,
    dynamics: Any,
    obs_tokens: torch.Tensor,
    proprio: torch.Tensor,
    guidance_set: GoalLatents,
    *,
    scale: float,
    stochastic_steps: int,
    initial_noise: torch.Tensor,
    ddim: DDIMConfig | None = None,
) -> torch.Tensor:
    """NAIVE REFERENCE (benchmark only — do not use): the official loop's structure, batch 1.

    Mirrors MaxDu17/DynaGuide ``_get_action_trajectory_guidance``: the noisy chunk is made to require
    grad once and then every policy call, guidance gradient and scheduler step is recorded by
    autograd, so the graph grows over all K·M denoising steps; stochastic sampling repeats the step
    with the same k ("repeat" mode).  Shapes: ``cond (1, C)``, ``obs_tokens (1, N, D)``,
    ``proprio (1, P)``, ``initial_noise (1, T, A)`` → actions ``(1, T, A)`` (detached at the end).
    """
    if initial_noise.shape[0] != 1:
        raise ValueError("the naive reference runs one chunk at a time (batch 1)")
    scheduler = make_ddim_scheduler(ddim)
    naction = initial_noise.clone()
    naction.requires_grad = True
    for k in scheduler.timesteps:
        timesteps = k.reshape(1).long()
        for _ in range(stochastic_steps):
            noise_pred = policy.predict_noise(naction, timesteps, cond)  # graph kept (no no_grad)
            d = guidance_set.metric(dynamics(obs_tokens, proprio, naction))
            grad = torch.autograd.grad(d.sum(), naction)[0]
            noise_pred = noise_pred - (1 - scheduler.alphas_cumprod[k]).sqrt() * (scale * grad)
            naction = scheduler.step(noise_pred, k, naction).prev_sample  # still attached to the graph
    return naction.detach()


# ------------------------------------------------------------------------------ setup
@dataclass
class BenchSetup:
    """Everything one configuration needs; conditioning precomputed for ``batch`` observations."""

    name: str
    policy: Any
    dynamics: Any
    cond: torch.Tensor  # (B, C)
    obs_tokens: torch.Tensor  # (B, N, D)
    proprio: torch.Tensor  # (B, P)
    guidance_set: GoalLatents
    noise: torch.Tensor  # (B, T, A)


def build_setup(name: str, batch: int, num_goals: int, guidance: GuidanceConfig, seed: int = 0) -> BenchSetup:
    """Random-weight policy + dynamics model of preset ``name`` with random observations and goals."""
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
    from dynaguide.embedders.random_patch import RandomPatchEmbedder
    from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown config {name!r}; choose from {CONFIG_NAMES}")
    torch.manual_seed(seed)
    policy_cfg = getattr(DiffusionPolicyConfig, name)()
    dynamics_cfg = getattr(LatentDynamicsConfig, name)()
    policy = DiffusionPolicy(policy_cfg).eval()
    dynamics = LatentDynamicsModel(dynamics_cfg).eval()
    proprio_dim, action_dim = policy_cfg.proprio_dim, policy_cfg.action_dim
    lo, hi = -torch.ones(action_dim), torch.ones(action_dim)
    policy.set_normalizer_stats(lo, hi, -torch.ones(proprio_dim), torch.ones(proprio_dim))
    dynamics.set_normalizer_stats(lo, hi, -torch.ones(dynamics_cfg.proprio_dim), torch.ones(dynamics_cfg.proprio_dim))
    side = int(round(dynamics_cfg.embed_tokens ** 0.5))
    embedder = RandomPatchEmbedder(image_size=side * 14, patch_size=14, dim=dynamics_cfg.embed_dim, seed=seed)

    gen = torch.Generator().manual_seed(seed)
    to, size = policy_cfg.n_obs_steps, policy_cfg.image_size
    obs = {key: torch.rand(batch, to, 3, size, size, generator=gen) for key in policy_cfg.image_keys}
    obs["proprio"] = torch.rand(batch, to, proprio_dim, generator=gen) * 2 - 1
    goal_images = torch.rand(num_goals, 3, size, size, generator=gen)
    current = torch.rand(batch, 3, size, size, generator=gen)
    with torch.no_grad():
        cond = policy.encode_observation(obs)
        obs_tokens = embedder(current)
    guidance_set = GoalLatents.from_images(embedder, dynamics, goal_images, None, guidance)
    noise = torch.randn(batch, policy_cfg.horizon, action_dim, generator=gen)
    proprio = obs["proprio"][:, -1, : dynamics_cfg.proprio_dim]
    return BenchSetup(name, policy, dynamics, cond, obs_tokens, proprio, guidance_set, noise)


class SavedTensorMeter:
    """Tracks the memory autograd holds in tensors saved for backward (unique storages), live and peak.

    Used as ``with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack)``; a storage is
    counted while any graph node still holds a tensor on it, so a graph kept across denoising steps
    shows up as a peak that grows with the number of steps.
    """

    def __init__(self, exclude_storages: set[int] | None = None) -> None:
        self.exclude = exclude_storages or set()  # e.g. model weights: they exist with or without a graph
        self.live: dict[int, list[int]] = {}  # storage ptr -> [holders, nbytes]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[ptr]

    def pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self.exclude:
            return _SavedHolder(tensor)
        entry = self.live.setdefault(ptr, [0, nbytes])
        if entry[0] == 0:
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        holder = _SavedHolder(tensor)
        weakref.finalize(holder, self._release, ptr)
        return holder

    @staticmethod
    def unpack(holder: Any) -> torch.Tensor:
        return holder.tensor


class _SavedHolder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def peak_saved_mb(fn: Callable[[], Any], modules: tuple[torch.nn.Module, ...] = ()) -> tuple[float, Any]:
    """Run ``fn`` once; return (peak MB held in autograd-saved tensors during it, its result).

    Weights and buffers of ``modules`` are not counted (they are in memory regardless of any graph).
    """
    exclude = {t.untyped_storage().data_ptr() for m in modules for t in (*m.parameters(), *m.buffers())}
    meter = SavedTensorMeter(exclude)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        result = fn()
    return meter.peak / 2**20, result


def _interleaved_median_ms(
    fns: dict[str, Callable[[], Any]], repeats: int, warmups: dict[str, Callable[[], Any]] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall-clock ms of each function over ``repeats`` rounds (warm-ups, if given, run first).

    Rounds interleave the functions (a, b, c, a, b, c, ...) so a change of machine load during the
    run affects all of them alike rather than whichever happened to run then.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for warm in (warmups or {}).values():
        warm()
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}, results


def bench_config(setup: BenchSetup, repeats: int, ddim: DDIMConfig) -> dict[str, float]:
    """Time guided / unguided / naive sampling for one setup; per-chunk milliseconds."""
    cfg = setup.guidance_set.config
    batch = setup.noise.shape[0]
    objective = DynaGuideObjective(setup.dynamics, setup.obs_tokens, setup.proprio, setup.guidance_set)

    def guided():
        return guided_ddim_sample(setup.policy, setup.cond, objective, scale=cfg.scale, ddim=ddim,
                                  stochastic_steps=cfg.stochastic_steps, stochastic_mode="repeat",
                                  initial_noise=setup.noise).actions

    def unguided():
        return guided_ddim_sample(setup.policy, setup.cond, None, scale=0.0, ddim=ddim,
                                  initial_noise=setup.noise).actions

    def naive_one(b: int = 0):
        return naive_official_guided_sample(
            setup.policy, setup.cond[b : b + 1], setup.dynamics, setup.obs_tokens[b : b + 1],
            setup.proprio[b : b + 1], setup.guidance_set, scale=cfg.scale,
            stochastic_steps=cfg.stochastic_steps, initial_noise=setup.noise[b : b + 1], ddim=ddim)

    def naive():
        return torch.cat([naive_one(b) for b in range(batch)])

    # warm-up (untimed): one full chunk of each, also measuring the memory autograd keeps alive
    memory: dict[str, float] = {}
    models = tuple(m for m in (setup.policy, setup.dynamics) if isinstance(m, torch.nn.Module))
    memory["guided"], _ = peak_saved_mb(guided, models)
    memory["naive"], _ = peak_saved_mb(naive_one, models)
    ms, out = _interleaved_median_ms({"guided": guided, "unguided": unguided, "naive": naive}, repeats,
                                     warmups={"unguided": unguided})
    return {
        "batch": batch,
        "guided_peak_saved_mb": memory["guided"],
        "naive_peak_saved_mb_per_chunk": memory["naive"],
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "guided_ms": ms["guided"] / batch,
        "unguided_ms": ms["unguided"] / batch,
        "naive_guided_ms": ms["naive"] / batch,
        "speedup_vs_naive": ms["naive"] / ms["guided"],
        "max_abs_diff_vs_naive": float((out["guided"] - out["naive"]).abs().max()),
        "guided_vs_unguided_max_abs_diff": float((out["guided"] - out["unguided"]).abs().max()),
    }


# ------------------------------------------------------------------------------ embedder cost
def bench_embedder(kind: str = "efficientnet_lite0", image_size: int = 128, stride: int = 16,
                   batches: tuple[int, ...] = (1, 32), repeats: int = 5, threads: int = 1,
                   source_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Embedding cost: ms per image of :func:`dynaguide.embedders.factory.make_embedder` for ``kind`` at
    ``image_size``.

    Inputs are random ``(B, 3, source_size, source_size)`` images in [0, 1] (``source_size`` defaults to
    ``image_size``: no resize in the timing; give e.g. 200 to include the resize from the CALVIN camera).
    ``torch.set_num_threads(threads)`` first.  Per batch size: the median wall time over ``repeats`` calls
    after one warm-up call, divided by B.  Also the 1-minute load average before and after (``os.getloadavg``).
    The previous torch thread count is restored afterwards.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        return _bench_embedder(kind, image_size, stride, batches, repeats, source_size, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _bench_embedder(kind: str, image_size: int, stride: int, batches: tuple[int, ...], repeats: int,
                    source_size: int | None, seed: int) -> dict[str, Any]:
    from dynaguide.embedders.factory import EmbedderConfig, make_embedder
    from dynaguide.embedders.identity import embedder_id

    cfg = EmbedderConfig(kind=kind, image_size=image_size, stride=stride) if kind != "random" else \
        EmbedderConfig(kind=kind, image_size=image_size)
    start = time.perf_counter()
    embedder = make_embedder(cfg).eval()
    load_s = time.perf_counter() - start
    side = source_size or cfg.image_size
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"kind": kind, "embedder_id": embedder_id(embedder), "image_size": cfg.image_size,
                           "source_size": side, "num_tokens": int(embedder.num_tokens), "dim": int(embedder.dim),
                           "threads": torch.get_num_threads(), "repeats": repeats, "load_s": load_s,
                           "load_avg_1min_before": os.getloadavg()[0], "ms_per_image": {}}
    for b in batches:
        images = torch.rand(b, 3, side, side, generator=gen)
        with torch.no_grad():
            embedder(images)  # warm-up
            times = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                embedder(images)
                times.append((time.perf_counter() - t0) * 1e3 / b)
        out["ms_per_image"][str(b)] = statistics.median(times)
    out["load_avg_1min_after"] = os.getloadavg()[0]
    return out
