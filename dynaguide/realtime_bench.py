"""Does a guided policy keep up with the robot?  Latency budget and wall-clock schedule (no ROS).

``dynaguide bench realtime --config config/calvin_sim.yaml`` (:func:`dynaguide_cli.bench.run_realtime_bench`) builds the
policy node's :class:`~dynaguide.guided_runner.GuidedPolicyRunner` from a graph's parameter file, times guided
chunks on this machine with the configured guidance (K goals, M, mode), and replays the measured compute
times through the executor the bridge and drivers use (:class:`~dynaguide.chunk_execution.ActionSchedule`) on a
virtual wall clock (:func:`simulate_wall_clock`).  It reports:

* ``p50_ms`` / ``p95_ms`` — compute per chunk (``GuidedPolicyRunner.act``: observation in, actions out);
* ``budget_ms`` — the execution budget, ``n_action_steps · action_dt``: the time the actions a chunk commits
  to last, during which the next chunk must be computed (with back-to-back replanning, a chunk computed in
  c ms is executed from its step c / dt on, so c must also stay below ``(horizon − n_action_steps) · dt``;
  the simulation checks that);
* ``dropped_fraction`` — control ticks, from the first chunk's first action on, on which the robot had no
  action to execute and held still: the share of the motion the policy failed to command;
* ``keeps_up`` — ``p95_ms ≤ budget_ms`` and ``dropped_fraction < 1 %``;
* ``execution_horizon`` — the configured variant's compute times replayed with other replanning periods P (steps):
  the budget without RTC is P·dt (every executed action at most P steps older than the newest observation; P =
  n_action_steps is the policy's training contract); with RTC the new chunk continues what runs meanwhile, so
  staleness no longer binds and the budget is what the previous chunk still covers, ``(T − o − P)·dt`` — and at
  most ``(T − o)·dt / 2`` once compute exceeds P·dt and chunks run back to back.  Both peak at P = (T − o) / 2;
  the simulated ``dropped_fraction`` per P shows which execution horizon feeds the robot best;
* ``load`` — ``os.getloadavg()`` before and after (1, 5, 15 min) beside ``cpu_count``: timings on a shared
  machine are only comparable within one run (variants are interleaved chunk by chunk).

The replanning rule simulated is the policy node's: a new chunk is computed from the newest observation once
it is ``replan_period_s`` newer than the one the last chunk used, and as soon as the sampler is free when
compute takes longer than that (back-to-back; the robot executes the previous chunk meanwhile).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dynaguide.config import ConfigError, from_dict, load_yaml, unflatten
from dynaguide.chunk_execution import ActionSchedule

#: keeps up only if fewer control ticks than this go without a fresh action
MAX_DROPPED_FRACTION = 0.01


@dataclass
class WallClockSimulation:
    """Counts of :func:`simulate_wall_clock` (control ticks after the first chunk arrived)."""

    ticks: int
    executed: int
    held: int
    dropped_late: int
    stale_on_arrival: int
    chunks: int
    executed_index_max: int  # the furthest chunk step executed (must stay < horizon for continuous motion)

    @property
    def dropped_fraction(self) -> float:
        """Ticks on which the robot had no action to execute (held still) / ticks.  Late drops of a new
        chunk's first action whose time slot the previous chunk already filled are not counted: no tick
        went without a command."""
        return self.held / self.ticks if self.ticks else 0.0


def simulate_wall_clock(compute_s: list[float], *, horizon: int, action_dt: float, replan_period_s: float,
                        start_index: int = 0, chunks: int | None = None) -> WallClockSimulation:
    """Replay chunk compute times on a virtual wall clock through :class:`ActionSchedule`.

    Control ticks and camera frames come every ``action_dt`` s (the camera at the control rate); chunk ``i``
    takes ``compute_s[i % len(compute_s)]`` s.  Args: ``horizon`` — steps per chunk (T); ``start_index`` —
    index of the observation step in the chunk (the policy's ``action_offset``); ``chunks`` — how many chunks
    to simulate (default ``4 · len(compute_s)``, cycling the measured times).
    """
    if not compute_s or any(not (c >= 0 and math.isfinite(c)) for c in compute_s):
        raise ValueError("compute_s must be a non-empty list of finite, non-negative seconds")
    if not (action_dt > 0 and replan_period_s >= 0 and horizon > start_index >= 0):
        raise ValueError("need action_dt > 0, replan_period_s >= 0 and 0 <= start_index < horizon")
    n_chunks = chunks if chunks is not None else 4 * len(compute_s)
    schedule = ActionSchedule(1, action_dt)  # chunks arrive after their stamp: never "in the future"
    # the sampler: chunk i uses the newest frame once it is replan_period_s newer than chunk i-1's
    arrivals: list[tuple[float, float]] = []  # (arrival time, observation stamp)
    free_at, last_obs = 0.0, -math.inf
    for i in range(n_chunks):
        due = max(free_at, last_obs + replan_period_s - 1e-9)
        obs = math.floor(due / action_dt + 1e-9) * action_dt  # newest frame at that time
        if obs < last_obs + replan_period_s - 1e-9:
            obs += action_dt
        start = max(due, obs)
        free_at = start + compute_s[i % len(compute_s)]
        arrivals.append((free_at, obs))
        last_obs = obs
    end = arrivals[-1][0]
    ticks = executed_index_max = 0
    # counting starts at the first chunk's first due action
    tick = math.ceil(max(arrivals[0][0], arrivals[0][1] + action_dt) / action_dt - 1e-9) * action_dt
    pending = list(arrivals)
    while tick <= end + 1e-9:
        while pending and pending[0][0] <= tick + 1e-12:
            arrival, obs = pending.pop(0)
            steps = np.arange(horizon, dtype=np.float64)[:, None]  # each action's value = its chunk step
            schedule.add_chunk(steps, obs, action_dt, start_index, now=arrival)
        action = schedule.next_action(tick)
        if action is not None:
            executed_index_max = max(executed_index_max, int(action[0]))
        ticks += 1
        tick += action_dt
    stats = schedule.stats
    return WallClockSimulation(ticks=ticks, executed=stats.executed, held=stats.held,
                               dropped_late=stats.dropped_late, stale_on_arrival=stats.stale_on_arrival,
                               chunks=n_chunks, executed_index_max=executed_index_max)


class LatencyMonitor:
    """Rolling compute times of the last ``window`` chunks against an execution budget (what the policy node
    publishes on ``policy/diagnostics``): ``add(ms)``, then ``p50_ms``, ``p95_ms``, ``keeps_up``."""

    def __init__(self, budget_ms: float, window: int = 20) -> None:
        if not (budget_ms > 0 and math.isfinite(budget_ms)) or window < 1:
            raise ValueError(f"need a positive finite budget and window >= 1, got {budget_ms}, {window}")
        self.budget_ms = float(budget_ms)
        self.window = int(window)
        self._ms: list[float] = []

    def add(self, compute_ms: float) -> None:
        self._ms = (self._ms + [float(compute_ms)])[-self.window:]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self._ms) if self._ms else float("nan")

    @property
    def p95_ms(self) -> float:
        return _percentile(self._ms, 95) if self._ms else float("nan")

    @property
    def keeps_up(self) -> bool:
        """p95 within the budget (True until a chunk has been timed)."""
        return not self._ms or self.p95_ms <= self.budget_ms


# ------------------------------------------------------------------------------ the benchmark
@dataclass
class GraphPolicySettings:
    """What the policy node of a graph parameter file (``config/*.yaml``) runs, as the bench needs it."""

    name: str
    runner: Any  # dynaguide.guided_runner.RunnerConfig
    action_dt: float
    replan_period_s: float
    #: side (px) of each camera's square frames as the graph publishes them, by policy image key
    camera_sizes: dict[str, int]
    embedder: Any  # dynaguide.embedders.factory.EmbedderConfig


def _section(data: dict, node: str, path: Path) -> dict:
    params = (data.get(node) or {}).get("ros__parameters") if isinstance(data.get(node), dict) else None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: {node}.ros__parameters must be a mapping")
    return unflatten(params)


def load_graph_policy(path: str | Path, checkpoints: str | Path | None = None) -> GraphPolicySettings:
    """Read the policy node's (and its embedder's) settings from a graph's ROS 2 parameter file.

    ``checkpoints``: a directory with ``policy/`` and ``dynamics/`` (an export of ``dynaguide calvin train``)
    replacing the file's ``models`` / ``runner.*_checkpoint`` values."""
    from dynaguide.embedders.factory import EmbedderConfig
    from dynaguide.guided_runner import RunnerConfig

    path = Path(path)
    data = load_yaml(path)
    policy = _section(data, "policy_node", path)
    if not policy:
        raise ConfigError(f"{path}: no policy_node.ros__parameters section")
    runner = from_dict(RunnerConfig, policy.get("runner", {}), where=f"{path}:policy_node.runner")
    models = policy.get("models")
    if checkpoints is None and models and not (runner.policy_checkpoint or runner.dynamics_checkpoint):
        # the policy node's `models`: relative to the share directory holding config/ (the repo), as the node does
        checkpoints = Path(models).expanduser() if Path(models).expanduser().is_absolute() \
            else path.resolve().parent.parent / models
    if checkpoints is not None:
        ckpt = Path(checkpoints)
        runner = replace(runner, policy_checkpoint=str(ckpt / "policy"), dynamics_checkpoint=str(ckpt / "dynamics"))
    embedding = _section(data, "embedding_node", path)
    embedder = from_dict(EmbedderConfig, embedding.get("embedder", {}), where=f"{path}:embedding_node.embedder")
    bridge = _section(data, "calvin_bridge", path)
    static = int(bridge.get("static_size") or _section(data, "camera_node", path).get("width") or runner.image_size)
    # a camera the file gives no size for is published at the static camera's size
    sizes = {"rgb_static": static, "rgb_gripper": int(bridge.get("gripper_size") or static)}
    return GraphPolicySettings(name=path.stem, runner=runner, action_dt=float(policy.get("action_dt", 1 / 30)),
                               replan_period_s=float(policy.get("replan_period_s", 0.5)),
                               camera_sizes=sizes, embedder=embedder)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _load_averages() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints), None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Variant:
    """One way of computing the chunk: ``exact`` variants must give the configured chunk (≤ 1e-5)."""

    name: str
    parallel_policy: bool
    guidance_overrides: dict = field(default_factory=dict)
    exact: bool = True
    fast_encoder: bool = True        # LatentDynamicsModel.inference_fast_path
    frozen_weights: bool = True      # dynamics weights without requires_grad (what the runner sets)
    reuse_conditioning: bool = True  # ConditionalUnet1D.reuse_conditioning (FiLM once per noise level, not M times)
    torch_threads: int | None = None  # None: the configured runner.torch_threads
    rtc: Any = None                  # RTCConfig: real-time chunking with the previous chunk as prefix (delay = P)


def default_variants(configured_parallel: bool, configured_threads: int = 1) -> list[Variant]:
    """The configured computation; the same computation as the code before each speed-up (``before: …``)
    and with the other thread placement / count (exact: outputs compared); real-time chunking with and without
    its Jacobian pass (another chunk by design: not exact); cheaper approximations (M = 2, guidance on the last 5
    DDIM steps only), whose effect on steering the CALVIN harness measures."""
    from dynaguide.guidance.rtc import RTCConfig

    p = configured_parallel
    other_threads = 2 if configured_threads == 1 else 1
    return [Variant("configured", p),
            Variant("before: conditioning per call", p, reuse_conditioning=False),
            Variant("before: conditioning per call, module encoder, trainable weights", p, fast_encoder=False,
                    frozen_weights=False, reuse_conditioning=False),
            Variant("parallel_policy" if not p else "sequential_policy", not p),
            Variant(f"torch_threads={other_threads}", p, torch_threads=other_threads),
            Variant("rtc: hard + Jacobian", p, exact=False, rtc=RTCConfig(enabled=True, mode="hard", jacobian=True)),
            Variant("rtc: hard, Jacobian-free", p, exact=False,
                    rtc=RTCConfig(enabled=True, mode="hard", jacobian=False)),
            Variant("M=2", p, {"stochastic_steps": 2}, exact=False),
            Variant("guided_steps=5", p, {"guided_steps": 5}, exact=False)]


#: replanning periods (steps) the ``execution_horizon`` replay tries
EXECUTION_HORIZONS = (4, 6, 7, 8, 9, 10, 12)


def bench_graph(settings: GraphPolicySettings, *, chunks: int = 30, goals: int = 20, warmup: int = 2,
                variants: list[Variant] | None = None, seed: int = 0) -> dict:
    """Time guided chunks of ``settings``' policy node, variants interleaved chunk by chunk (load drift hits
    them alike), and replay each variant's compute times on the wall clock.  Returns the JSON entry."""
    import torch

    from dynaguide.embedders.factory import make_embedder
    from dynaguide.guidance.goals import GuidanceConfig
    from dynaguide.guided_runner import GuidedPolicyRunner

    base = GuidedPolicyRunner.from_config(settings.runner)
    policy, dynamics = base.policy, base.dynamics
    base.close()
    variants = variants or default_variants(settings.runner.parallel_policy, settings.runner.torch_threads)
    rng = np.random.default_rng(seed)
    n_tok, dim = dynamics.cfg.embed_tokens, dynamics.cfg.embed_dim
    goal_tokens = rng.normal(size=(goals, n_tok, dim)).astype(np.float32)
    to = policy.n_obs_steps
    sizes = {k: settings.camera_sizes.get(k, settings.camera_sizes["rgb_static"]) for k in policy.cfg.image_keys}
    images = {k: rng.integers(0, 256, (to, n, n, 3), dtype=np.uint8) for k, n in sizes.items()}
    proprio = rng.normal(size=(to, settings.runner.proprio_dim)).astype(np.float32)
    obs_tokens = rng.normal(size=(n_tok, dim)).astype(np.float32)
    g = settings.runner.guidance
    runners = {}
    for v in variants:
        guidance = GuidanceConfig(**{**g.__dict__, **v.guidance_overrides})
        runner = GuidedPolicyRunner(policy, dynamics, trained=base.trained, guidance_defaults=guidance,
                                    seed=settings.runner.seed,
                                    torch_threads=v.torch_threads or settings.runner.torch_threads,
                                    parallel_policy=v.parallel_policy, rtc=v.rtc)
        runner.set_guidance_tokens(goal_tokens, None)
        runners[v.name] = runner
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    diffs: dict[str, float] = {v.name: 0.0 for v in variants}
    embed_ms: list[float] = []
    embedder = make_embedder(settings.embedder).eval()
    frame = torch.as_tensor(images[policy.cfg.image_keys[0]][-1:]).permute(0, 3, 1, 2).float() / 255.0
    load_before, load_triple_before = _load_average(), _load_averages()
    replan_steps = max(1, round(settings.replan_period_s / settings.action_dt))
    noise_net = getattr(policy, "noise_net", None)
    from tqdm import tqdm

    for i in tqdm(range(warmup + chunks), desc=f"realtime {settings.name}", unit="round"):
        reference = None
        for v in variants:
            dynamics.inference_fast_path = v.fast_encoder
            dynamics.requires_grad_(not v.frozen_weights)
            if noise_net is not None and hasattr(noise_net, "reuse_conditioning"):
                noise_net.reuse_conditioning = v.reuse_conditioning
            # RTC: planned P steps after the previous chunk, the P actions running meanwhile frozen (d = P)
            rtc = {"rtc_shift": replan_steps, "rtc_delay": replan_steps} if v.rtc is not None else {}
            result = runners[v.name].act(images, proprio, obs_tokens, **rtc)
            if i >= warmup:
                times[v.name].append(result.compute_ms)
            if v.name == "configured":
                reference = result.actions
            elif v.exact and reference is not None:
                diffs[v.name] = max(diffs[v.name], float(np.abs(result.actions - reference).max()))
        t0 = time.perf_counter()
        with torch.no_grad():
            embedder(frame)
        if i >= warmup:
            embed_ms.append((time.perf_counter() - t0) * 1e3)
    dynamics.inference_fast_path = True
    dynamics.requires_grad_(False)
    if noise_net is not None and hasattr(noise_net, "reuse_conditioning"):
        noise_net.reuse_conditioning = True
    for runner in runners.values():
        runner.close()
    budget_ms = policy.n_action_steps * settings.action_dt * 1e3
    rows = {}
    for v in variants:
        ms = times[v.name]
        sim = simulate_wall_clock([t / 1e3 for t in ms], horizon=policy.horizon, action_dt=settings.action_dt,
                                  replan_period_s=settings.replan_period_s, start_index=runners[v.name].action_offset)
        p50, p95 = statistics.median(ms), _percentile(ms, 95)
        rows[v.name] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                        "keeps_up": bool(p95 <= budget_ms and sim.dropped_fraction < MAX_DROPPED_FRACTION),
                        "dropped_fraction": round(sim.dropped_fraction, 4),
                        "stale_on_arrival_per_chunk": round(sim.stale_on_arrival / sim.chunks, 2),
                        "exact": v.exact, "parallel_policy": v.parallel_policy,
                        "torch_threads": v.torch_threads or settings.runner.torch_threads,
                        "rtc": None if v.rtc is None else {"mode": v.rtc.mode, "jacobian": v.rtc.jacobian,
                                                           "shift": replan_steps, "delay": replan_steps},
                        "guidance_overrides": v.guidance_overrides}
        if v.exact and v.name != "configured":
            rows[v.name]["max_abs_diff_vs_configured"] = diffs[v.name]
            # > 1: this variant takes longer than the configured code (for "before: ..." the speed-up gained)
            rows[v.name]["time_ratio_vs_configured"] = round(p50 / statistics.median(times["configured"]), 3)
    configured = rows["configured"]
    horizon, offset, dt = policy.horizon, runners["configured"].action_offset, settings.action_dt
    sweep = {}
    for steps in EXECUTION_HORIZONS:
        if steps >= horizon - offset:
            continue
        sim = simulate_wall_clock([t / 1e3 for t in times["configured"]], horizon=horizon, action_dt=dt,
                                  replan_period_s=steps * dt, start_index=offset)
        rtc_steps = min(horizon - offset - steps, (horizon - offset) / 2)
        sweep[str(steps)] = {"budget_ms": round(steps * dt * 1e3, 1), "rtc_budget_ms": round(rtc_steps * dt * 1e3, 1),
                             "dropped_fraction": round(sim.dropped_fraction, 4)}
    return {**{k: configured[k] for k in ("p50_ms", "p95_ms", "keeps_up", "dropped_fraction")},
            "budget_ms": round(budget_ms, 1),
            "execution_horizon": {"configured_steps": replan_steps, "horizon": horizon, "action_offset": offset,
                                  "replays": sweep},
            "settings": {"trained": base.trained, "goals_K": goals, "stochastic_steps_M": g.stochastic_steps,
                         "stochastic_mode": g.stochastic_mode, "guided_steps": g.guided_steps,
                         "ddim_steps": policy.cfg.ddim.num_inference_steps, "horizon": policy.horizon,
                         "n_action_steps": policy.n_action_steps, "action_dt": settings.action_dt,
                         "replan_period_s": settings.replan_period_s, "camera_px": sizes,
                         "torch_threads": settings.runner.torch_threads,
                         "parallel_policy": settings.runner.parallel_policy, "chunks": chunks,
                         "embedder": settings.embedder.kind, "embed_ms_p50": round(statistics.median(embed_ms), 1),
                         "cpu_count": os.cpu_count(), "load_avg_1min_before": load_before,
                         "load_avg_1min_after": _load_average(), "load_avg_before": load_triple_before,
                         "load_avg_after": _load_averages()},
            "variants": rows}
