"""Online inference: a frozen policy, a dynamics model and the guidance in force -> action chunks.

:class:`GuidedPolicyRunner` is what the ROS policy node wraps (and what offline evaluations can use):
it keeps the observation history, the current :class:`~dynaguide.guidance.goals.GoalLatents`, and turns
one observation into one un-normalised action chunk with the guided DDIM sampler.  No ROS here.

Real-time chunking (``RunnerConfig.rtc.enabled``, off by default): in wall-clock mode the robot runs the previous
chunk while the next one is computed.  :class:`RTCSchedule` estimates that delay d online (ceil of the p95 of the
last observation-to-publication latencies over the action period, measured on the node's clock: 0 with a
lockstep simulator, whose clock stops while the policy thinks, so lockstep behaviour is unchanged) and the shift
between consecutive chunks' observations; :meth:`GuidedPolicyRunner.act` then samples the chunk with the previous
chunk as its prefix, its first d actions frozen (``ChunkResult.frozen_steps``; :mod:`dynaguide.guidance.rtc`).

Embedder check: a dynamics model whose config records the embedder it was trained on
(``LatentDynamicsConfig.embedder``) only accepts observation/goal tokens whose ``embedder_id`` is that
embedder's id (or empty: provenance unknown); other ids raise :class:`EmbedderMismatchError` instead of
steering with latents of another space.  Older checkpoints record nothing: no check is possible (logged
once).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dynaguide.checkpoint import load_checkpoint
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.guidance.goals import GuidanceConfig, GoalLatents
from dynaguide.guidance.objectives import DynaGuideObjective, action_transform_for
from dynaguide.guidance.rtc import RTCConfig, delay_steps, prefix_weights, shift_prefix
from dynaguide.guidance.sampler import guided_ddim_sample
from dynaguide.guidance.signal import GuidanceSignal, guidance_signal
from dynaguide.realtime_bench import LatencyMonitor
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.policy.lerobot_adapter import POLICY_KINDS, LeRobotAdapterConfig, load_policy

logger = logging.getLogger(__name__)


class EmbedderMismatchError(ValueError):
    """Tokens come from another embedder than the one the dynamics model was trained on."""


@dataclass
class RunnerConfig:
    """Where the models come from and how guidance is applied by default.

    Empty checkpoint paths build *untrained, randomly initialised* CPU-config models — good for
    plumbing tests only; the runner reports ``trained = False`` for them.

    ``torch_threads``: intra-op threads of the sampling thread.  ``parallel_policy``: evaluate the policy's
    noise estimate on a second thread (``torch_threads`` threads too) while the dynamics model's gradient is
    computed — the same chunk, bit for bit; it pays when a core is free for it (``dynaguide bench realtime``
    measures both).
    """

    policy_checkpoint: str = ""
    dynamics_checkpoint: str = ""
    image_keys: tuple[str, ...] = ("rgb_static",)
    image_size: int = 64
    proprio_dim: int = 15
    action_dim: int = 7
    embed_tokens: int = 256
    embed_dim: int = 384
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    seed: int = 0
    torch_threads: int = 1
    parallel_policy: bool = False
    policy_kind: str = "dynaguide"   # "lerobot": policy_checkpoint is a LeRobot DiffusionPolicy save_pretrained dir
    lerobot: LeRobotAdapterConfig = field(default_factory=LeRobotAdapterConfig)
    rtc: RTCConfig = field(default_factory=RTCConfig)

    def __post_init__(self) -> None:
        if self.policy_kind not in POLICY_KINDS:
            raise ValueError(f"runner.policy_kind must be one of {POLICY_KINDS}, got {self.policy_kind!r}")
        if self.policy_kind != "dynaguide" and not self.policy_checkpoint:
            raise ValueError(f"runner.policy_kind={self.policy_kind!r} needs runner.policy_checkpoint")


@dataclass
class ChunkResult:
    actions: np.ndarray          # (T, A) un-normalised, units of the policy's action space
    guided: bool
    metric: float                # Eq. 2 value of the returned chunk (NaN when unguided)
    compute_ms: float
    fallback: str = ""           # why a chunk meant to be guided is unguided (non-finite guidance), else ""
    frozen_steps: int = 0        # actions from action_offset on constrained to the previous chunk's (RTC), 0 = none
    signal: GuidanceSignal | None = None  # proposal vs chunk against the goals (guidance set, also with s = 0)


class RTCSchedule:
    """Online real-time-chunking bookkeeping of a policy loop (ROS-free; the policy node holds one).

    ``request(obs_stamp)`` → ``(shift, delay)`` for :meth:`GuidedPolicyRunner.act`: ``shift`` = control steps
    between the previous chunk's observation and ``obs_stamp`` (None before the first chunk), ``delay`` = d =
    ``ceil(p95 latency / dt)`` over the last ``window`` chunks (0 before any).  ``done(obs_stamp, latency_ms)``
    records a published chunk: its observation stamp (s) and the time from that observation to publication (ms,
    on the loop's clock).  ``dt``: seconds per action.
    """

    def __init__(self, dt: float, window: int = 20) -> None:
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"RTCSchedule needs a positive action period dt, got {dt}")
        self.dt = float(dt)
        self.latency = LatencyMonitor(1.0, window)   # only its p95 is used (the budget is irrelevant here)
        self.last_stamp: float | None = None

    def request(self, obs_stamp: float) -> tuple[int | None, int]:
        shift = None if self.last_stamp is None else max(0, round((obs_stamp - self.last_stamp) / self.dt))
        p95 = self.latency.p95_ms
        return shift, (delay_steps(max(0.0, p95), self.dt) if math.isfinite(p95) else 0)

    def done(self, obs_stamp: float, latency_ms: float) -> None:
        self.last_stamp = float(obs_stamp)
        self.latency.add(max(0.0, float(latency_ms)))


class GuidedPolicyRunner:
    """Holds policy + dynamics model + guidance; ``act(...)`` returns one chunk.

    Args:
        policy: a :class:`DiffusionPolicy` (any ``NoisePredictionPolicy`` with ``unnormalize_actions``).
        dynamics: the :class:`LatentDynamicsModel` trained for that policy's action space.
    """

    def __init__(self, policy: DiffusionPolicy, dynamics: LatentDynamicsModel, *, trained: bool,
                 guidance_defaults: GuidanceConfig | None = None, seed: int = 0, torch_threads: int = 1,
                 parallel_policy: bool = False, rtc: RTCConfig | None = None) -> None:
        # inference only: frozen weights (autograd then records only the path from the chunk to the metric)
        self.policy = policy.eval().requires_grad_(False)
        self.dynamics = dynamics.eval().requires_grad_(False)
        self.trained = trained
        self.guidance_defaults = guidance_defaults or GuidanceConfig()
        self.guidance: GoalLatents | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.torch_threads = max(1, int(torch_threads))
        self.policy_executor: ThreadPoolExecutor | None = None
        if parallel_policy:
            self.policy_executor = ThreadPoolExecutor(1, thread_name_prefix="policy_noise",
                                                      initializer=torch.set_num_threads,
                                                      initargs=(self.torch_threads,))
        # index of the current step in the policy's chunk (0 for DiffusionPolicy: the chunk starts now)
        self.action_offset = int(getattr(policy, "action_offset", 0))
        self.rtc = rtc or RTCConfig()
        self._previous_chunk: torch.Tensor | None = None  # (1, T, A) normalised: the last chunk act() returned
        # id of the embedder the dynamics model was trained on (None: not recorded, nothing to check against)
        self.expected_embedder_id: str | None = getattr(getattr(dynamics, "cfg", None), "embedder_id", None)
        # policy chunk → the dynamics model's action space: None when both normalise alike, else the affine map
        # through raw units (as the CALVIN harness steers); a horizon / action-dimension mismatch raises
        self.action_transform = action_transform_for(policy, dynamics) if trained else None
        if trained:
            if self.action_transform is not None:
                logger.info("the policy and the dynamics model normalise actions differently: guidance maps chunks "
                            "policy-normalised -> raw -> dynamics-normalised")
            if self.expected_embedder_id is None:
                logger.warning("the dynamics checkpoint records no embedder: cannot check that observation and "
                               "goal tokens come from the embedder it was trained on")

    def check_embedder_id(self, embedder_id: str | None, what: str = "observation") -> None:
        """Raise :class:`EmbedderMismatchError` if ``embedder_id`` is non-empty and differs from the id the
        dynamics model records; no-op when either is unknown."""
        expected = self.expected_embedder_id
        if expected is None or not embedder_id or embedder_id == expected:
            return
        raise EmbedderMismatchError(
            f"{what} tokens come from embedder {embedder_id!r} but the dynamics model was trained on "
            f"{expected!r}: refusing to steer with latents of another embedder (configure the embedding node's "
            f"embedder.* to match, or load a dynamics checkpoint trained on {embedder_id!r})")

    @classmethod
    def from_config(cls, cfg: RunnerConfig) -> GuidedPolicyRunner:
        trained = bool(cfg.policy_checkpoint) and bool(cfg.dynamics_checkpoint)
        if cfg.policy_checkpoint:
            policy = load_policy(cfg.policy_kind, cfg.policy_checkpoint, image_keys=tuple(cfg.image_keys),
                                 lerobot=cfg.lerobot)
            if policy.cfg.proprio_dim != cfg.proprio_dim:
                raise ValueError(f"runner.proprio_dim={cfg.proprio_dim} but the policy takes {policy.cfg.proprio_dim}")
        else:
            torch.manual_seed(cfg.seed)
            policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(
                image_keys=tuple(cfg.image_keys), image_size=cfg.image_size,
                proprio_dim=cfg.proprio_dim, action_dim=cfg.action_dim))
            policy.set_normalizer_stats(-torch.ones(cfg.action_dim), torch.ones(cfg.action_dim),
                                        -torch.ones(cfg.proprio_dim) * 3, torch.ones(cfg.proprio_dim) * 3)
        if cfg.dynamics_checkpoint:
            dynamics, _ = load_checkpoint(Path(cfg.dynamics_checkpoint))
        else:
            torch.manual_seed(cfg.seed + 1)
            dynamics = LatentDynamicsModel(LatentDynamicsConfig.cpu(
                embed_tokens=cfg.embed_tokens, embed_dim=cfg.embed_dim, proprio_dim=cfg.proprio_dim,
                action_dim=policy.action_dim, horizon=policy.horizon))
        return cls(policy, dynamics, trained=trained, guidance_defaults=cfg.guidance, seed=cfg.seed,
                   torch_threads=cfg.torch_threads, parallel_policy=cfg.parallel_policy, rtc=cfg.rtc)

    def close(self) -> None:
        """Stop the policy thread of ``parallel_policy`` (idempotent)."""
        if self.policy_executor is not None:
            self.policy_executor.shutdown(wait=True)
            self.policy_executor = None

    # ----------------------------------------------------------------------------- guidance
    def set_guidance_tokens(self, positive: np.ndarray | None, negative: np.ndarray | None,
                            settings: GuidanceConfig | None = None, *,
                            embedder_ids: str | list[str] | tuple[str, ...] | None = None) -> GoalLatents:
        """Raw embedder tokens ``(K, N, D)`` of goal images → the guidance in force.

        ``settings``: s, σ, M, ... (a validated :class:`GuidanceConfig`; ``None``: ``guidance_defaults``; retune
        the defaults with :meth:`GuidanceConfig.retuned`).  ``embedder_ids``: the id(s) the goal tokens carry
        (one for all, or one per goal; empty = unknown).  Raises ``ValueError`` — :class:`EmbedderMismatchError`
        for another embedder's tokens — and keeps the previous guidance if the tokens do not fit the
        dynamics model.
        """
        ids = [embedder_ids] if isinstance(embedder_ids, str) else list(embedder_ids or [])
        for i, emb_id in enumerate(ids):
            self.check_embedder_id(emb_id, "goal" if len(ids) == 1 else f"goal {i}")
        if settings is not None and not isinstance(settings, GuidanceConfig):
            raise TypeError(f"settings must be a GuidanceConfig, got {type(settings).__name__}")
        cfg = replace(settings if settings is not None else self.guidance_defaults)  # a copy: ours to keep
        expected = (self.dynamics.cfg.embed_tokens, self.dynamics.cfg.embed_dim)

        def outcome(name, tokens):
            if tokens is None or len(tokens) == 0:
                return None
            tokens = torch.as_tensor(np.asarray(tokens, dtype=np.float32))
            if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
                raise ValueError(f"{name} goal tokens must be (K, {expected[0]}, {expected[1]}), "
                                 f"got {tuple(tokens.shape)}"
                                 " (tokens of another embedder or geometry than the dynamics model's?)")
            with torch.no_grad():
                return self.dynamics.outcome_latent(tokens)

        new = GoalLatents(outcome("positive", positive), outcome("negative", negative), cfg)
        self.guidance = new
        return new

    def clear_guidance(self) -> None:
        self.guidance = None

    # ----------------------------------------------------------------------------- acting
    def _rtc_kwargs(self, shift: int | None, delay: int) -> tuple[dict, int]:
        """The sampler's prefix keywords and the frozen-step count for a chunk planned ``shift`` steps after the
        previous one, with ``delay`` steps running from the previous chunk meanwhile (none: ``({}, 0)``)."""
        if not self.rtc.enabled or shift is None or delay <= 0 or self._previous_chunk is None:
            return {}, 0
        horizon, o = self.policy.horizon, self.action_offset
        overlap = horizon - int(shift)
        frozen = min(int(delay), overlap - o)
        if frozen <= 0:
            return {}, 0   # the previous chunk ends before this one's current step: nothing to agree with
        return {"prefix": shift_prefix(self._previous_chunk, shift),
                "prefix_weights": prefix_weights(horizon, o + frozen, overlap), "rtc": self.rtc}, frozen

    def act(self, images: dict[str, np.ndarray], proprio: np.ndarray, obs_tokens: np.ndarray | None,
            obs_embedder_id: str | None = None, *, rtc_shift: int | None = None, rtc_delay: int = 0) -> ChunkResult:
        """One chunk from the latest observation history.

        Args:
            images: camera key → ``(To, H, W, 3) uint8`` (oldest first; resized to the policy's size).
            proprio: ``(To, P)`` raw proprioception.
            obs_tokens: ``(N, D)`` embedder tokens of the newest policy-camera frame (needed when guided).
            obs_embedder_id: the id ``obs_tokens`` carry (empty/None = unknown); another embedder's id raises
                :class:`EmbedderMismatchError` when guided.
            rtc_shift, rtc_delay: real-time chunking (with ``rtc.enabled``; :class:`RTCSchedule`): control steps since
                the previous chunk's observation (None: no RTC) and the delay d in steps; the chunk's first d actions
                from ``action_offset`` then agree with the previous chunk's (``ChunkResult.frozen_steps``).
        """
        start = time.perf_counter()
        # OpenMP thread counts are per calling thread: a ROS executor thread would otherwise use every core,
        # and oversubscribed spin-waiting threads made a 0.2 s chunk take 2-6 s on a 2-core machine.
        torch.set_num_threads(self.torch_threads)
        obs = {}
        for key in self.policy.cfg.image_keys:
            if key not in images:
                raise ValueError(f"missing camera {key!r}")
            # frames go in at camera resolution: the policy's encoder resizes them exactly as in training
            frames = torch.as_tensor(np.asarray(images[key])).permute(0, 3, 1, 2).float() / 255.0
            obs[key] = frames.unsqueeze(0)
        proprio_t = torch.as_tensor(np.asarray(proprio, dtype=np.float32)).unsqueeze(0)
        obs["proprio"] = proprio_t
        guidance = self.guidance
        objective = scorer = None   # scorer: the same objective, for the guidance signal (also with s = 0)
        if guidance is not None and guidance.scale > 0:
            if obs_tokens is None:
                raise ValueError("guidance is active but no observation embedding is available")
            self.check_embedder_id(obs_embedder_id, "observation")
        if guidance is not None and obs_tokens is not None:
            try:
                self.check_embedder_id(obs_embedder_id, "observation")
                scorer = DynaGuideObjective(
                    self.dynamics, torch.as_tensor(np.asarray(obs_tokens, dtype=np.float32)).unsqueeze(0),
                    proprio_t[:, -1], guidance, action_offset=self.action_offset,
                    action_transform=self.action_transform)
            except ValueError:
                if guidance.scale > 0:
                    raise
            objective = scorer if guidance.scale > 0 else None
        with torch.no_grad():
            cond = self.policy.encode_observation(obs)
        fallback = ""
        rtc_kwargs, frozen = self._rtc_kwargs(rtc_shift, rtc_delay)
        try:
            sampling = guidance.config.sampler_kwargs() if objective else {"scale": 0.0}
            sample = guided_ddim_sample(self.policy, cond, objective, ddim=self.policy.cfg.ddim,
                                        policy_executor=self.policy_executor, generator=self.generator, **sampling,
                                        **rtc_kwargs)
            if objective is not None and not torch.isfinite(sample.actions).all():
                raise ValueError("the guided chunk is not finite")
        except ValueError as exc:
            if objective is None:
                raise
            # unusable guidance (non-finite metric or gradient): act with the base policy rather than not at all
            fallback = f"guidance fell back to the base policy for this chunk: {exc}"
            objective = None
            sample = guided_ddim_sample(self.policy, cond, None, scale=0.0, ddim=self.policy.cfg.ddim,
                                        generator=self.generator, **rtc_kwargs)
        self._previous_chunk = sample.actions.detach().clone()
        signal = None
        if scorer is not None and sample.proposal is not None:
            try:
                signal = guidance_signal(scorer, sample.proposal, sample.actions)
            except ValueError:
                signal = None   # non-finite: no signal for this chunk (the chunk itself is unaffected)
        # the sampler already scored its final chunk (GuidedSample.objective): no second dynamics pass
        metric = float(sample.objective[0]) if objective is not None and sample.objective is not None else float("nan")
        with torch.no_grad():
            actions = self.policy.unnormalize_actions(sample.actions)[0].cpu().numpy()
        return ChunkResult(actions=actions.astype(np.float32), guided=objective is not None, metric=metric,
                           compute_ms=(time.perf_counter() - start) * 1e3, fallback=fallback, frozen_steps=frozen,
                           signal=signal)
