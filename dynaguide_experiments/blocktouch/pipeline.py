"""The BlockTouch stages — collect, train-policy, train-dynamics, eval, report — each resumable.

A stage whose output already exists is skipped unless ``force``; training resumes from the last
checkpoint of an interrupted run (``dynaguide.training``), evaluation from the last finished
(layout, method) cell.  Stage wall-clock times accumulate in ``<work_dir>/stages.json`` and are copied
into ``results.json``.

Outputs (``work_dir`` = data + checkpoints, not committed; ``results_dir`` = committed results)::

    <work_dir>/demos.hdf5                    scripted demonstrations (the policy's data)
    <work_dir>/failures.hdf5                 rejected scripted episodes that touched another block
                                             (outcome models only, when ``outcome_failures``)
    <work_dir>/{policy,goal_policy,classifier,dynamics}/latest/   safetensors checkpoints
    <work_dir>/eval/<layout>/<method>.json   one evaluation cell (+ .npz trajectories)
    <results_dir>/results.json, results.md, bars.png, trajectories_<layout>.png
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dynaguide.checkpoint import load_checkpoint, read_checkpoint_meta
from dynaguide.config import to_dict
from dynaguide.dynamics import LatentDynamicsModel
from dynaguide.embedders.factory import make_embedder
from dynaguide.guidance import GoalLatents
from dynaguide.policy import DiffusionPolicy
from dynaguide.training import train_classifier, train_dynamics, train_policy

from . import dataset as ds
from .classifier import OutcomeClassifier
from .config import BlockTouchConfig
from .env import NUM_BLOCKS, BlockTouchEnv
from .evaluation import rollout, wilson_interval
from .layouts import LAYOUT_NAMES, Scenes, sample_layout
from .methods import (BaseSampler, ClassifierGuidedSampler, GoalConditionedSampler, LatentGuidedSampler,
                      SamplingBaselineSampler)
from .scripted import collect_demos, simulate_scripted_batch

IMAGE_KEY = "rgb"
GUIDED_METHODS = ("dynaguide_classifier", "dynaguide_latent")


class Paths:
    def __init__(self, cfg: BlockTouchConfig) -> None:
        self.work = Path(cfg.work_dir)
        self.results = Path(cfg.results_dir)
        self.demos = self.work / "demos.hdf5"
        self.failures = self.work / "failures.hdf5"
        self.policy = self.work / "policy"
        self.goal_policy = self.work / "goal_policy"
        self.classifier = self.work / "classifier"
        self.dynamics = self.work / "dynamics"
        self.eval = self.work / "eval"
        self.stages = self.work / "stages.json"

    def cell(self, layout: str, method: str) -> Path:
        return self.eval / layout / f"{method}.json"


def _log(msg: str) -> None:
    print(f"[blocktouch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record_stage(paths: Paths, name: str, seconds: float) -> None:
    """Add ``seconds`` to stage ``name`` in ``stages.json`` (a resumed stage accumulates)."""
    paths.work.mkdir(parents=True, exist_ok=True)
    stages = json.loads(paths.stages.read_text()) if paths.stages.exists() else {}
    stages[name] = round(stages.get(name, 0.0) + seconds, 2)
    paths.stages.write_text(json.dumps(stages, indent=2) + "\n")


def reset_stages(paths: Paths, names: tuple[str, ...]) -> None:
    """Forget the recorded times of ``names`` (a forced stage is timed afresh)."""
    if paths.stages.exists():
        stages = json.loads(paths.stages.read_text())
        for name in names:
            stages.pop(name, None)
        paths.stages.write_text(json.dumps(stages, indent=2) + "\n")


def _timed(paths: Paths, name: str, fn: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    out = fn()
    record_stage(paths, name, time.perf_counter() - t0)
    return out


def _checkpoint_done(directory: Path, steps: int) -> bool:
    try:
        return int(read_checkpoint_meta(directory / "latest").get("step") or 0) >= steps
    except ValueError:
        return False


def _prepare(directory: Path, force: bool) -> None:
    if force and directory.exists():
        shutil.rmtree(directory)


class FrameItems(Dataset):
    """Per-frame items for ``dynaguide.training`` from a vectorised batch function of frame indices."""

    def __init__(self, make_batch: Callable[[torch.Tensor], dict], indices: np.ndarray) -> None:
        self.make_batch = make_batch
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        batch = self.make_batch(torch.tensor([int(self.indices[i])]))
        return {k: v[0] for k, v in batch.items()}


def _unit_stats(model: torch.nn.Module) -> None:
    """Actions and agent positions both live in [-1, 1] by construction: fixed normaliser stats, so the
    policy, classifier and dynamics model share one normalised action space (guidance needs no transform)."""
    lo, hi = -torch.ones(2), torch.ones(2)
    model.set_normalizer_stats(lo, hi, lo, hi)


# ---------------------------------------------------------------------------- stages
def stage_collect(cfg: BlockTouchConfig, force: bool = False) -> None:
    paths = Paths(cfg)
    if paths.demos.exists() and (paths.failures.exists() or not cfg.outcome_failures) and not force:
        _log(f"collect: {paths.demos} exists, skipping (use --force to redo)")
        return
    reset_stages(paths, ("collect",))
    failures = paths.failures if cfg.outcome_failures else None
    _log(f"collect: {cfg.collect.num_demos} demos -> {paths.demos}" + (f", failures -> {failures}" if failures else ""))
    stats = _timed(paths, "collect", lambda: collect_demos(paths.demos, cfg.collect, cfg.env, failures_path=failures))
    _log(f"collect: {stats}")


def _load_split(cfg: BlockTouchConfig, with_failures: bool = False) -> tuple[ds.DemoArrays, np.ndarray, np.ndarray]:
    """Frames and a by-episode train/validation split; ``with_failures`` appends the failure episodes."""
    paths = Paths(cfg)
    demos = ds.load_demos([paths.demos, paths.failures] if with_failures else paths.demos)
    train_idx, val_idx = demos.split(cfg.val_fraction, seed=cfg.collect.seed)
    return demos, train_idx, val_idx


def stage_train_policy(cfg: BlockTouchConfig, force: bool = False) -> None:
    """Base policy, then (when ``goal_conditioned`` is evaluated) the goal-conditioned baseline policy."""
    paths = Paths(cfg)
    jobs = [("train_policy", paths.policy, cfg.policy, cfg.policy_train, False)]
    if "goal_conditioned" in cfg.eval.methods:
        jobs.append(("train_goal_policy", paths.goal_policy, replace(cfg.policy, goal_conditioned=True),
                     cfg.goal_policy_train, True))
    demos = None
    for name, directory, pcfg, tcfg, with_goal in jobs:
        _prepare(directory, force)
        if force:
            reset_stages(paths, (name,))
        if _checkpoint_done(directory, tcfg.steps):
            _log(f"{name}: {directory} complete, skipping")
            continue
        if demos is None:
            demos, train_idx, val_idx = _load_split(cfg)
        policy = DiffusionPolicy(pcfg)
        _unit_stats(policy)

        def make_batch(idx, _goal=with_goal, _cfg=pcfg, _demos=demos):
            batch = ds.policy_batch(_demos, idx, _cfg.n_obs_steps, _cfg.horizon, IMAGE_KEY)
            if _goal:
                batch[_cfg.goal_key] = _demos.final_images[_demos.episode[idx]].float() / 255.0
            return batch

        _log(f"{name}: {tcfg.steps} steps on {len(train_idx)} frames")
        _timed(paths, name, partial(train_policy, policy, FrameItems(make_batch, train_idx), tcfg, directory,
                                    FrameItems(make_batch, val_idx) if len(val_idx) else None))


def stage_train_dynamics(cfg: BlockTouchConfig, force: bool = False) -> None:
    """(a) the outcome classifier and (b) the latent dynamics model (embeddings of all frames cached in memory),
    both on the demonstrations plus, when ``cfg.outcome_failures``, the failure episodes."""
    paths = Paths(cfg)
    demos = None
    if force:
        reset_stages(paths, ("train_classifier", "embed_frames", "train_dynamics"))
    _prepare(paths.classifier, force)
    if _checkpoint_done(paths.classifier, cfg.classifier_train.steps):
        _log(f"train_classifier: {paths.classifier} complete, skipping")
    else:
        demos, train_idx, val_idx = _load_split(cfg, cfg.outcome_failures)
        clf = OutcomeClassifier(cfg.classifier)
        _unit_stats(clf)
        make_batch = lambda idx: ds.classifier_batch(demos, idx, cfg.classifier.horizon, cfg.outcome_plan_tail)  # noqa: E731
        _log(f"train_classifier: {cfg.classifier_train.steps} steps")
        _timed(paths, "train_classifier", lambda: train_classifier(
            clf, FrameItems(make_batch, train_idx), cfg.classifier_train, paths.classifier,
            FrameItems(make_batch, val_idx) if len(val_idx) else None))
    _prepare(paths.dynamics, force)
    if _checkpoint_done(paths.dynamics, cfg.dynamics_train.steps):
        _log(f"train_dynamics: {paths.dynamics} complete, skipping")
        return
    if demos is None:
        demos, train_idx, val_idx = _load_split(cfg, cfg.outcome_failures)
    embedder = make_embedder(cfg.embedder).eval()

    def embed_all() -> tuple[torch.Tensor, torch.Tensor]:
        def embed(images: torch.Tensor) -> torch.Tensor:
            out = []
            with torch.no_grad():
                for i in tqdm(range(0, len(images), 512), desc="embed", mininterval=5.0):
                    out.append(embedder(images[i:i + 512].float() / 255.0).half())
            return torch.cat(out)
        return embed(demos.images), embed(demos.final_images)

    tokens, final_tokens = _timed(paths, "embed_frames", embed_all)
    model = LatentDynamicsModel(cfg.dynamics)
    _unit_stats(model)

    def make_batch(idx):
        batch = ds.dynamics_batch(demos, tokens, final_tokens, idx, cfg.dynamics.horizon, cfg.outcome_plan_tail)
        batch["obs_tokens"] = batch["obs_tokens"].float()
        batch["target_tokens"] = batch["target_tokens"].float()
        return batch

    _log(f"train_dynamics: {cfg.dynamics_train.steps} steps")
    _timed(paths, "train_dynamics", lambda: train_dynamics(
        model, FrameItems(make_batch, train_idx), cfg.dynamics_train, paths.dynamics,
        FrameItems(make_batch, val_idx) if len(val_idx) else None))


# ---------------------------------------------------------------------------- evaluation
def layout_goal_frames(layout: str, cfg: BlockTouchConfig) -> dict[int, np.ndarray]:
    """Goal images per colour for ``layout``: final (touch) frames of scripted episodes started from that
    layout's distribution (own seed, disjoint from the evaluation scenes) that touched the colour.
    Returns class -> ``(K, S, S, 3)`` uint8 with ``K <= goals_per_class`` (empty if never reached)."""
    k = cfg.eval.goals_per_class
    rng = np.random.default_rng(cfg.eval.goal_seed + 7919 * LAYOUT_NAMES.index(layout))
    frames: dict[int, list[np.ndarray]] = {c: [] for c in range(NUM_BLOCKS)}
    for _ in range(40):
        need = [c for c in range(NUM_BLOCKS) if len(frames[c]) < k]
        if not need:
            break
        targets = np.repeat(need, max(2 * k, 8))
        scenes = sample_layout(layout, rng, len(targets), cfg.env)
        for ep in simulate_scripted_batch(rng, targets, cfg.collect, cfg.env, scenes):
            if ep.touched == ep.target and len(frames[ep.target]) < k:
                frames[ep.target].append(ep.final_image[0])
    size = cfg.env.image_size
    return {c: (np.stack(f) if f else np.zeros((0, size, size, 3), np.uint8)) for c, f in frames.items()}


def _chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3))).float() / 255.0


class _Models:
    """Lazily loaded checkpoints (EMA weights where saved)."""

    def __init__(self, cfg: BlockTouchConfig) -> None:
        self.cfg = cfg
        self.paths = Paths(cfg)
        self._cache: dict[str, object] = {}

    def _load(self, name: str, directory: Path):
        if name not in self._cache:
            if not (directory / "latest").is_dir():
                raise ValueError(f"missing checkpoint {directory / 'latest'}: run the training stages first")
            model, _ = load_checkpoint(directory / "latest")
            self._cache[name] = model.requires_grad_(False)
        return self._cache[name]

    @property
    def policy(self):
        return self._load("policy", self.paths.policy)

    @property
    def goal_policy(self):
        return self._load("goal_policy", self.paths.goal_policy)

    @property
    def classifier(self):
        return self._load("classifier", self.paths.classifier)

    @property
    def dynamics(self):
        return self._load("dynamics", self.paths.dynamics)

    @property
    def embedder(self):
        if "embedder" not in self._cache:
            self._cache["embedder"] = make_embedder(self.cfg.embedder).eval()
        return self._cache["embedder"]


def _build_sampler(method: str, models: _Models, cfg: BlockTouchConfig, goals: dict[int, np.ndarray] | None):
    e = cfg.eval
    ddim = cfg.policy.ddim
    if method == "base":
        return BaseSampler(models.policy, ddim)
    if method == "dynaguide_classifier":
        return ClassifierGuidedSampler(models.policy, models.classifier, ddim, e.classifier_scale, e.stochastic_steps,
                                       e.stochastic_mode, e.other_weight, IMAGE_KEY)
    if method == "sampling":
        return SamplingBaselineSampler(models.policy, models.classifier, ddim, e.sampling_num, e.other_weight,
                                       IMAGE_KEY)
    if method == "dynaguide_latent":
        assert goals is not None
        sets = {}
        for target in range(NUM_BLOCKS):
            if len(goals[target]) == 0:
                continue
            others = [goals[c] for c in range(NUM_BLOCKS) if c != target and len(goals[c])]
            neg = (torch.from_numpy(np.moveaxis(np.concatenate(others), -1, -3).copy())
                   if (others and e.latent_negatives) else None)
            pos = torch.from_numpy(np.moveaxis(goals[target], -1, -3).copy())
            sets[target] = GoalLatents.from_images(models.embedder, models.dynamics, pos, neg, e.latent_guidance)
        return LatentGuidedSampler(models.policy, models.dynamics, models.embedder, sets, ddim, IMAGE_KEY)
    if method == "goal_conditioned":
        return GoalConditionedSampler(models.goal_policy, ddim)
    raise ValueError(f"unknown method {method!r}")


def evaluate_cell(layout: str, method: str, cfg: BlockTouchConfig, models: _Models,
                  goals: dict[int, np.ndarray] | None) -> dict:
    """Roll out ``cfg.eval.rollouts`` episodes of ``method`` on ``layout``; the scenes depend only on the
    layout and the seed, so every method sees the same initial conditions (paired comparison)."""
    e = cfg.eval
    li = LAYOUT_NAMES.index(layout)
    scenes = sample_layout(layout, np.random.default_rng(e.seed + 7919 * li), e.rollouts, cfg.env)
    goal_images = None
    if method == "goal_conditioned":
        assert goals is not None
        rng = np.random.default_rng(e.seed + 31 + li)
        picks = []
        for t in scenes.target:
            if len(goals[int(t)]) == 0:
                raise ValueError(f"layout {layout}: no goal frames for colour {int(t)}")
            picks.append(goals[int(t)][rng.integers(len(goals[int(t)]))])
        goal_images = _chw(np.stack(picks))
    sampler = _build_sampler(method, models, cfg, goals)
    res = rollout(sampler, scenes, cfg.env, n_obs_steps=cfg.policy.n_obs_steps, n_action_steps=e.n_action_steps,
                  horizon=e.horizon, seed=e.seed + 101 * li + 7, image_key=IMAGE_KEY, goal_images=goal_images,
                  max_batch=e.max_batch)
    summary = res.summary()
    paths = Paths(cfg)
    out = paths.cell(layout, method)
    out.parent.mkdir(parents=True, exist_ok=True)
    if e.trajectories_plotted > 0 and method != "goal_conditioned":
        # Fig.-7-style samples: several rollouts from one and the same scene (the layout's first one)
        p = e.trajectories_plotted
        one = Scenes(np.repeat(scenes.agent[:1], p, 0), np.repeat(scenes.blocks[:1], p, 0),
                     np.repeat(scenes.yaw[:1], p, 0), np.repeat(scenes.target[:1], p, 0))
        fig = rollout(sampler, one, cfg.env, n_obs_steps=cfg.policy.n_obs_steps, n_action_steps=e.n_action_steps,
                      horizon=e.horizon, seed=e.seed + 101 * li + 8, image_key=IMAGE_KEY, max_batch=e.max_batch)
        np.savez_compressed(out.with_suffix(".npz"), agent=one.agent, blocks=one.blocks, yaw=one.yaw, target=one.target,
                            touched=fig.touched, **{f"traj_{i}": fig.trajectories[i] for i in range(p)})
        summary["figure_scene_rate"] = float(np.mean(fig.success))
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def calibrate_latent_scale(cfg: BlockTouchConfig, models: _Models, num_frames: int = 64) -> dict:
    """Scale s for DynaGuide (b) giving it the same guidance strength as (a) at ``classifier_scale``.

    On ``num_frames`` training frames (fixed seed; no evaluation scene is used) the demonstrated chunk is
    noised to a random inference timestep and the gradient norms ``‖∇_a d‖`` of both objectives (target
    blue; (b) with the ``random`` layout's goal set) are compared:
    ``s_b = classifier_scale · median‖∇ d_a‖ / median‖∇ d_b‖``.
    """
    from dynaguide.diffusion import make_ddim_scheduler
    from dynaguide.guidance import DynaGuideObjective, objective_value_and_grad

    from .methods import classifier_objective

    demos = ds.load_demos(Paths(cfg).demos, max_demos=200)
    rng = np.random.default_rng(cfg.eval.seed + 5)
    idx = torch.from_numpy(rng.choice(demos.num_frames, size=min(num_frames, demos.num_frames), replace=False))
    batch = ds.classifier_batch(demos, idx, cfg.classifier.horizon, cfg.outcome_plan_tail)
    policy = models.policy
    clean = policy.normalize_actions(batch["actions"])
    scheduler = make_ddim_scheduler(cfg.policy.ddim)
    gen = torch.Generator().manual_seed(cfg.eval.seed + 6)
    steps = scheduler.timesteps[torch.randint(0, len(scheduler.timesteps), (len(idx),), generator=gen)]
    noisy = scheduler.add_noise(clean, torch.randn(clean.shape, generator=gen), steps)
    clf_obj = classifier_objective(models.classifier, batch["image"], batch["proprio"], 0, cfg.eval.other_weight)
    _, g_a = objective_value_and_grad(clf_obj, noisy)
    goals = layout_goal_frames("random", cfg)
    sampler = _build_sampler("dynaguide_latent", models, replace(cfg, eval=replace(cfg.eval, latent_scale_match=False)),
                             goals)
    with torch.no_grad():
        tokens = models.embedder(batch["image"])
    lat_obj = DynaGuideObjective(models.dynamics, tokens, batch["proprio"], sampler.goal_sets[0], action_offset=0)
    _, g_b = objective_value_and_grad(lat_obj, noisy)
    norm_a = float(g_a.flatten(1).norm(dim=1).median())
    norm_b = float(g_b.flatten(1).norm(dim=1).median())
    if norm_b <= 0:
        raise ValueError("latent guidance gradient is zero on the calibration frames; cannot match scales")
    return {"latent_scale": cfg.eval.classifier_scale * norm_a / norm_b, "median_grad_norm_classifier": norm_a,
            "median_grad_norm_latent": norm_b, "frames": len(idx)}


def _effective_cfg(cfg: BlockTouchConfig, models: _Models) -> tuple[BlockTouchConfig, dict | None]:
    """Apply the latent scale calibration (cached in ``<work_dir>/eval/calibration.json``) when enabled."""
    if not cfg.eval.latent_scale_match or "dynaguide_latent" not in cfg.eval.methods:
        return cfg, None
    path = Paths(cfg).eval / "calibration.json"
    if path.exists():
        calib = json.loads(path.read_text())
    else:
        t0 = time.perf_counter()
        calib = calibrate_latent_scale(cfg, models)
        record_stage(Paths(cfg), "calibrate", time.perf_counter() - t0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(calib, indent=2) + "\n")
    _log(f"latent guidance scale matched to the classifier's: {calib}")
    lg = replace(cfg.eval.latent_guidance, scale=float(calib["latent_scale"]))
    return replace(cfg, eval=replace(cfg.eval, latent_guidance=lg)), calib


def stage_eval(cfg: BlockTouchConfig, force: bool = False, command: str = "") -> dict:
    paths = Paths(cfg)
    if force:
        reset_stages(paths, ("eval", "goal_frames", "calibrate"))
        if paths.eval.exists():
            shutil.rmtree(paths.eval)
    models = _Models(cfg)
    cfg, _ = _effective_cfg(cfg, models)
    for layout in cfg.eval.layouts:
        goals = None
        for method in cfg.eval.methods:
            cell = paths.cell(layout, method)
            if cell.exists():
                _log(f"eval {layout}/{method}: done, skipping")
                continue
            if goals is None and method in ("dynaguide_latent", "goal_conditioned"):
                goals = _timed(paths, "goal_frames", partial(layout_goal_frames, layout, cfg))
            t0 = time.perf_counter()
            summary = evaluate_cell(layout, method, cfg, models, goals)
            record_stage(paths, "eval", time.perf_counter() - t0)
            _log(f"eval {layout}/{method}: rate {summary['rate']:.3f} ci95 [{summary['ci95'][0]:.3f}, "
                 f"{summary['ci95'][1]:.3f}] n={summary['n']} ({summary['seconds']:.0f} s)")
    return write_results(cfg, command)


def write_results(cfg: BlockTouchConfig, command: str = "") -> dict:
    """Assemble ``results.json`` from the finished cells (``rate``, ``ci95``, ``n`` plus diagnostics)."""
    paths = Paths(cfg)
    layouts: dict[str, dict] = {}
    for layout in cfg.eval.layouts:
        for method in cfg.eval.methods:
            cell = paths.cell(layout, method)
            if cell.exists():
                summary = json.loads(cell.read_text())
                summary["ci95"] = list(wilson_interval(int(round(summary["rate"] * summary["n"])), summary["n"]))
                layouts.setdefault(layout, {})[method] = summary
    mean = {}
    for method in cfg.eval.methods:
        rates = [layouts[lay][method]["rate"] for lay in cfg.eval.layouts if method in layouts.get(lay, {})]
        if len(rates) == len(cfg.eval.layouts):
            mean[method] = float(np.mean(rates))
    stages = json.loads(paths.stages.read_text()) if paths.stages.exists() else {}
    calib_path = paths.eval / "calibration.json"
    results = {"layouts": layouts, "mean_over_layouts": mean, "stages_s": stages,
               "total_s": round(sum(stages.values()), 1), "command": command,
               "latent_scale_calibration": json.loads(calib_path.read_text()) if calib_path.exists() else None,
               "config": to_dict(cfg)}
    paths.results.mkdir(parents=True, exist_ok=True)
    (paths.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def stage_sweep(cfg: BlockTouchConfig, scales: list[float], methods: tuple[str, ...], layouts: tuple[str, ...],
                rollouts: int, seed_offset: int = 50_000, command: str = "") -> dict:
    """Guidance-scale sweep on *validation* scenes (seed ``eval.seed + seed_offset``, disjoint from the
    evaluation scenes).  Writes ``<results_dir>/sweep.json``: ``{method: {scale: {layout: summary}}}``.
    For ``dynaguide_latent`` the scale is a multiplier of the calibrated scale."""
    paths = Paths(cfg)
    models = _Models(cfg)
    eff, calib = _effective_cfg(cfg, models)
    out: dict = {"command": command, "seed": cfg.eval.seed + seed_offset, "rollouts": rollouts,
                 "latent_scale_calibration": calib, "results": {}}
    for method in methods:
        for scale in scales:
            if method == "dynaguide_classifier":
                run_cfg = replace(eff, eval=replace(eff.eval, classifier_scale=scale))
            elif method == "dynaguide_latent":
                lg = replace(eff.eval.latent_guidance, scale=eff.eval.latent_guidance.scale * scale)
                run_cfg = replace(eff, eval=replace(eff.eval, latent_guidance=lg))
            else:
                raise ValueError(f"sweep supports dynaguide_classifier and dynaguide_latent, not {method!r}")
            for layout in layouts:
                li = LAYOUT_NAMES.index(layout)
                scenes = sample_layout(layout, np.random.default_rng(run_cfg.eval.seed + seed_offset + 7919 * li),
                                       rollouts, cfg.env)
                goals = layout_goal_frames(layout, cfg) if method == "dynaguide_latent" else None
                sampler = _build_sampler(method, models, run_cfg, goals)
                res = rollout(sampler, scenes, cfg.env, n_obs_steps=cfg.policy.n_obs_steps,
                              n_action_steps=cfg.eval.n_action_steps, horizon=cfg.eval.horizon,
                              seed=cfg.eval.seed + seed_offset + li, image_key=IMAGE_KEY)
                summary = res.summary()
                key = f"{run_cfg.eval.stochastic_mode}:{scale}"
                out["results"].setdefault(method, {}).setdefault(key, {})[layout] = summary
                _log(f"sweep {method} scale {scale} {layout}: rate {summary['rate']:.2f} "
                     f"left {summary['left_arena']:.2f} touched {summary['touched_any']:.2f}")
                paths.results.mkdir(parents=True, exist_ok=True)
                (paths.results / f"sweep_{cfg.eval.stochastic_mode}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def first_chunk_outcomes(sampler, scenes: Scenes, cfg: BlockTouchConfig, classifier: torch.nn.Module,
                         seed: int) -> dict[str, np.ndarray]:
    """Sample one chunk per scene from its initial observation, execute all ``T`` actions open loop, and
    score the same chunk with the outcome classifier.

    Returns ``touched (N,)`` (block the executed chunk touched first, −1 none) and ``probs (N, C)`` (the
    classifier's outcome probabilities for that chunk).  Tells apart "the outcome model is wrong" from
    "the sampler produced a chunk its own outcome model scores badly".
    """
    to = cfg.policy.n_obs_steps
    env = BlockTouchEnv(cfg.env)
    obs = env.reset_to(scenes.agent, scenes.blocks, scenes.yaw)
    image = _chw(obs["image"])
    proprio = torch.from_numpy(obs["proprio"]).float()
    batch = {IMAGE_KEY: image[:, None].repeat(1, to, 1, 1, 1), "proprio": proprio[:, None].repeat(1, to, 1)}
    with torch.no_grad():
        actions = sampler(batch, scenes.target, torch.Generator().manual_seed(seed)).float()
        probs = torch.softmax(classifier(image, proprio, classifier.action_normalizer.normalize(actions)), dim=-1)
    for t in range(actions.shape[1]):
        if env.done.all():
            break
        env.step(actions[:, t].numpy().astype(np.float64))
    return {"touched": env.touched.copy(), "probs": probs.numpy()}


def stage_diagnose(cfg: BlockTouchConfig, methods: tuple[str, ...], layouts: tuple[str, ...], scenes_per_layout: int,
                   seed_offset: int = 50_000, command: str = "") -> dict:
    """Open-loop first-chunk diagnosis on *validation* scenes (as :func:`stage_sweep`): per (layout, method)
    the rate at which the executed chunk touches the target first (``chunk_target_rate``), the classifier's
    mean probability of the target for those chunks (``classifier_p_target``) and its accuracy on the
    chunks that touched a block (``classifier_accuracy``).  Writes ``<results_dir>/diagnose.json``."""
    paths = Paths(cfg)
    models = _Models(cfg)
    out: dict = {"command": command, "seed": cfg.eval.seed + seed_offset, "scenes": scenes_per_layout,
                 "classifier_scale": cfg.eval.classifier_scale, "results": {}}
    for layout in layouts:
        li = LAYOUT_NAMES.index(layout)
        scenes = sample_layout(layout, np.random.default_rng(cfg.eval.seed + seed_offset + 7919 * li),
                               scenes_per_layout, cfg.env)
        for method in methods:
            if method not in ("base", "dynaguide_classifier", "sampling"):
                raise ValueError(f"diagnose supports base, dynaguide_classifier and sampling, not {method!r}")
            res = first_chunk_outcomes(_build_sampler(method, models, cfg, None), scenes, cfg, models.classifier,
                                       seed=cfg.eval.seed + seed_offset + li)
            touched, probs, target = res["touched"], res["probs"], scenes.target
            hit = touched >= 0
            summary = {
                "chunk_target_rate": float(np.mean(touched == target)),
                "chunk_touched_any": float(np.mean(hit)),
                "classifier_p_target": float(np.mean(probs[np.arange(len(target)), target])),
                "classifier_accuracy": float(np.mean(probs[hit].argmax(-1) == touched[hit])) if hit.any() else None,
                "n": int(len(target)),
            }
            out["results"].setdefault(layout, {})[method] = summary
            _log(f"diagnose {layout}/{method}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()
                                                             if isinstance(v, float)))
    paths.results.mkdir(parents=True, exist_ok=True)
    (paths.results / "diagnose.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
